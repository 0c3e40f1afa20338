"""Where things live inside a causal LM: decoder layers, hidden size, final norm, LM head.

emoreg reads and edits the residual stream at the output of each decoder layer, so
it has to find those layers in whatever model it is handed: a bare transformers
``PreTrainedModel``, or one wrapped by PEFT, DDP, a DeepSpeed engine, Accelerate or
``torch.compile`` (possibly several of them, nested). This module does that without
importing DeepSpeed or PEFT (or, until a model is passed in, transformers): a wrapper
class can only exist if its library is already in ``sys.modules``.

Decoder layers are looked up in this order, stopping at the first step that finds a
``ModuleList`` all of whose children fit:

1. the layer class(es) named by ``_can_record_outputs["hidden_states"]`` (what
   transformers itself uses to collect ``output_hidden_states``);
2. ``transformers.modeling_layers.GradientCheckpointingLayer`` children;
3. children whose class name is listed in ``_no_split_modules``;
4. well-known attribute paths (``model.layers``, ``transformer.h``, ...).

Steps 1-3 first look only inside the text decoder (``get_decoder()``), so that a
multimodal model's vision tower, which may have more blocks, is not picked; then in
the whole model. When a step matches several ``ModuleList`` objects the longest wins.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from emoreg.errors import ModelLayoutError

__all__ = [
    "final_norm_and_unembedding",
    "find_decoder_layers",
    "hidden_from_output",
    "hidden_size",
    "model_id_string",
    "num_layers",
    "replace_hidden_in_output",
    "unwrap_model",
]

#: Attribute paths of the decoder-layer list in well-known architectures (step 4).
KNOWN_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Qwen2/3, Mistral, Gemma2/3, Phi3, OLMo2, ...
    "layers",  # a bare backbone (LlamaModel, ...)
    "transformer.h",  # GPT-2, GPT-J, GPT-Neo, Bloom, Falcon
    "h",
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT, BART-style decoders
    "decoder.layers",
    "language_model.layers",  # multimodal wrappers
    "model.language_model.layers",
    "language_model.model.layers",
    "transformer.blocks",  # MPT
    "transformer.layers",
    "backbone.layers",  # Mamba
    "blocks",
)

#: Attribute paths of the final norm applied before the LM head.
KNOWN_FINAL_NORM_PATHS: tuple[str, ...] = (
    "model.norm",
    "norm",
    "transformer.ln_f",
    "ln_f",
    "gpt_neox.final_layer_norm",
    "final_layer_norm",
    "model.final_layernorm",
    "model.decoder.final_layer_norm",
    "language_model.norm",
    "model.language_model.norm",
    "language_model.model.norm",
    "transformer.norm_f",
    "backbone.norm_f",
)

#: Attributes under which wrappers of single layers keep the wrapped module
#: (``torch.compile``, FSDP1, torch's activation-checkpoint wrapper).
_INNER_MODULE_ATTRS: tuple[str, ...] = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")

_MAX_UNWRAP_DEPTH = 32


# --------------------------------------------------------------------------- helpers


def _loaded_class(module_name: str, class_name: str) -> type | None:
    """Return ``module_name.class_name`` if that module is already imported, else None.

    Never imports anything: a wrapper class from a library that was never imported
    cannot have instances.
    """
    module = sys.modules.get(module_name)
    cls = getattr(module, class_name, None) if module is not None else None
    return cls if isinstance(cls, type) else None


def _is_pretrained_model(module: object) -> bool:
    """True if ``module`` is a transformers ``PreTrainedModel`` (without importing transformers)."""
    cls = _loaded_class("transformers.modeling_utils", "PreTrainedModel")
    return cls is not None and isinstance(module, cls)


def _child_module(module: nn.Module, attr: str) -> nn.Module | None:
    """``module.<attr>`` if it is an ``nn.Module`` registered as a child, else None.

    Only registered children count, so that ``__getattr__`` forwarding (as in
    DeepSpeed's engine) and unrelated attributes are not mistaken for a wrapped model.
    """
    child = module._modules.get(attr)
    return child if isinstance(child, nn.Module) else None


def _unwrap_once(module: nn.Module) -> nn.Module | None:
    """Strip one wrapper layer from ``module``; None if it is not a known wrapper."""
    if _is_pretrained_model(module):
        return None
    # torch.compile's OptimizedModule, FSDP1, activation-checkpoint wrappers.
    for attr in _INNER_MODULE_ATTRS:
        inner = _child_module(module, attr)
        if inner is not None:
            return inner
    # PEFT: PeftModel.get_base_model(); tuners (LoraModel, ...) keep the model in `.model`.
    peft_model_cls = _loaded_class("peft.peft_model", "PeftModel")
    if peft_model_cls is not None and isinstance(module, peft_model_cls):
        return module.get_base_model()
    tuner_cls = _loaded_class("peft.tuners.tuners_utils", "BaseTuner")
    if tuner_cls is not None and isinstance(module, tuner_cls):
        return module.model
    # DDP, DataParallel, DeepSpeed engine, FSDP1 root and any other module whose only
    # child is `.module` (the convention Accelerate's `extract_model_from_parallel` relies on).
    wrapper_types = tuple(
        cls
        for cls in (
            nn.parallel.DistributedDataParallel,
            nn.DataParallel,
            _loaded_class("deepspeed.runtime.engine", "DeepSpeedEngine"),
        )
        if cls is not None
    )
    inner = _child_module(module, "module")
    if inner is not None and (isinstance(module, wrapper_types) or len(module._modules) == 1):
        return inner
    return None


def _unwrap_chain(model: nn.Module) -> list[nn.Module]:
    """The wrappers around ``model`` from the outside in, ending with the unwrapped model."""
    chain = [model]
    for _ in range(_MAX_UNWRAP_DEPTH):
        inner = _unwrap_once(chain[-1])
        if inner is None or any(inner is seen for seen in chain):
            return chain
        chain.append(inner)
    raise ModelLayoutError(
        f"could not unwrap {type(model).__name__}: more than {_MAX_UNWRAP_DEPTH} nested wrappers "
        f"({' > '.join(type(m).__name__ for m in chain[:6])} > ...)"
    )


def wrapper_chain(model: nn.Module) -> list[nn.Module]:
    """``model``, every wrapper inside it (DDP, DeepSpeed engine, ``torch.compile``, PEFT) and, last,
    the unwrapped model: the modules a forward call passes through on its way to the transformer."""
    return _unwrap_chain(model)


def _strip_layer_wrappers(module: nn.Module) -> nn.Module:
    """A decoder layer without per-layer wrappers (``torch.compile``, FSDP1, checkpointing)."""
    for _ in range(_MAX_UNWRAP_DEPTH):
        inner = next((c for a in _INNER_MODULE_ATTRS if (c := _child_module(module, a)) is not None), None)
        if inner is None:
            return module
        module = inner
    return module


def _module_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every non-empty ``ModuleList`` in ``model`` with its dotted name, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]


def _pretrained_submodels(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` and every submodule that is a transformers ``PreTrainedModel``."""
    yield model
    for sub in model.modules():
        if sub is not model and _is_pretrained_model(sub):
            yield sub


def _hidden_state_predicates(model: nn.Module) -> list[Callable[[str, nn.Module], bool]]:
    """Predicates ``(layer_path, layer) -> bool`` built from ``_can_record_outputs``.

    A spec may be a class, a class-name string, an ``OutputRecorder`` (``target_class``,
    ``class_name``, ``layer_name``) or a list of those.
    """
    predicates: list[Callable[[str, nn.Module], bool]] = []
    for sub in _pretrained_submodels(model):
        recordable = getattr(sub, "_can_record_outputs", None)
        if not isinstance(recordable, Mapping) or recordable.get("hidden_states") is None:
            continue
        specs = recordable["hidden_states"]
        for spec in specs if isinstance(specs, (list, tuple)) else [specs]:
            predicates.append(_spec_predicate(spec))
    return predicates


def _spec_predicate(spec: Any) -> Callable[[str, nn.Module], bool]:
    """Turn one ``_can_record_outputs`` spec into a predicate on ``(layer_path, layer)``.

    Mirrors ``transformers.utils.output_capturing.recursively_install_hooks``: a class
    matches by ``isinstance``; a name (string spec or ``OutputRecorder.class_name``)
    matches the layer's class name or the end of its dotted path; ``layer_name`` must
    then occur in that path.
    """
    if isinstance(spec, str):
        target_class, class_name, layer_name = None, spec, ""
    elif isinstance(spec, type):
        target_class, class_name, layer_name = spec, None, ""
    else:  # OutputRecorder
        target_class = getattr(spec, "target_class", None)
        class_name = getattr(spec, "class_name", None)
        layer_name = (getattr(spec, "layer_name", None) or "").strip(".")

    def predicate(path: str, layer: nn.Module) -> bool:
        by_class = isinstance(target_class, type) and isinstance(layer, target_class)
        by_name = isinstance(class_name, str) and (
            type(layer).__name__.endswith(class_name) or path.endswith(class_name)
        )
        in_place = not layer_name or f".{layer_name}." in f".{path}."
        return (by_class or by_name) and in_place

    return predicate


def _matching_lists(
    lists: list[tuple[str, nn.ModuleList]], accepts: Callable[[str, nn.Module], bool]
) -> list[tuple[str, nn.ModuleList]]:
    """The ``ModuleList`` objects every child of which ``accepts`` (given its dotted path)."""
    return [
        (name, ml)
        for name, ml in lists
        if all(accepts(f"{name}.{i}" if name else str(i), _strip_layer_wrappers(c)) for i, c in enumerate(ml))
    ]


def _longest(candidates: list[tuple[str, nn.ModuleList]]) -> nn.ModuleList | None:
    """The longest candidate (the first one on ties), or None."""
    return max(candidates, key=lambda item: len(item[1]))[1] if candidates else None


def _decoder_prefix(model: nn.Module) -> str | None:
    """Dotted name of the text decoder returned by ``get_decoder()``; '' or None when there is none."""
    get_decoder = getattr(model, "get_decoder", None)
    if not callable(get_decoder):
        return None
    try:
        decoder = get_decoder()
    except Exception:  # noqa: BLE001 - best effort: some models raise for "no decoder"
        return None
    if not isinstance(decoder, nn.Module):
        return None
    return next((name for name, m in model.named_modules() if m is decoder), None)


def _no_split_names(model: nn.Module) -> set[str]:
    """Class names listed in ``_no_split_modules`` of the model and its submodels."""
    names: set[str] = set()
    for sub in _pretrained_submodels(model):
        listed = getattr(sub, "_no_split_modules", None)
        if isinstance(listed, (list, tuple, set, frozenset)):
            names.update(n for n in listed if isinstance(n, str))
    return names


def _get_path(module: nn.Module, path: str) -> object | None:
    """``module.a.b.c`` for ``path='a.b.c'``, or None if any step is missing."""
    obj: object = module
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _describe_lists(lists: list[tuple[str, nn.ModuleList]]) -> str:
    """One line per ModuleList: dotted name, length, child class names."""
    if not lists:
        return "  (no non-empty nn.ModuleList found)"
    lines = []
    for name, ml in lists:
        classes = sorted({type(c).__name__ for c in ml})
        lines.append(f"  - {name or '<root>'}: {len(ml)} x {', '.join(classes)}")
    return "\n".join(lines)


def _text_config(config: Any) -> Any:
    """``config.get_text_config()`` for multimodal configs, else ``config`` (None stays None)."""
    get_text_config = getattr(config, "get_text_config", None)
    if callable(get_text_config):
        try:
            return get_text_config()
        except Exception:  # noqa: BLE001 - fall back to the top-level config
            return config
    return config


def _search_decoder_layers(base: nn.Module) -> nn.ModuleList | None:
    """Run the lookup steps on an unwrapped model; None if none of them finds the layers.

    Steps 1-3 look inside the text decoder (``get_decoder()``) first, so that the
    vision tower of a multimodal model is not taken for the decoder layers.
    """
    all_lists = _module_lists(base)
    prefix = _decoder_prefix(base)
    scopes = [all_lists]
    if prefix:
        scopes.insert(0, [(n, ml) for n, ml in all_lists if n.startswith(prefix + ".")])
    for lists in scopes:
        found = _search_lists(base, lists)
        if found is not None:
            return found

    for path in KNOWN_LAYER_PATHS:
        found = _get_path(base, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    return None


def _search_lists(base: nn.Module, lists: list[tuple[str, nn.ModuleList]]) -> nn.ModuleList | None:
    """Steps 1-3 of the lookup over ``lists``: recorded class, checkpointing layer, no-split class."""
    predicates = _hidden_state_predicates(base)
    if predicates:
        found = _longest(_matching_lists(lists, lambda path, layer: any(p(path, layer) for p in predicates)))
        if found is not None:
            return found

    checkpoint_layer = _loaded_class("transformers.modeling_layers", "GradientCheckpointingLayer")
    if checkpoint_layer is not None:
        found = _longest(_matching_lists(lists, lambda _path, layer: isinstance(layer, checkpoint_layer)))
        if found is not None:
            return found

    no_split = _no_split_names(base)
    if no_split:
        return _longest(_matching_lists(lists, lambda _path, layer: type(layer).__name__ in no_split))
    return None


# --------------------------------------------------------------------------- public API


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip training wrappers until a transformers ``PreTrainedModel`` (or a bare module) is left.

    Handles DDP / ``DataParallel`` / DeepSpeed engines / Accelerate-prepared modules
    (``.module``), ``torch.compile``'s ``OptimizedModule`` (``._orig_mod``), FSDP1
    (``._fsdp_wrapped_module``), PEFT ``PeftModel`` (``get_base_model()``) and PEFT
    tuners such as ``LoraModel`` (``.model``), nested in any order. Imports neither
    DeepSpeed nor PEFT.

    Args:
        model: the model as handed to emoreg.

    Returns:
        The innermost model. It shares parameters and modules with ``model``.
    """
    return _unwrap_chain(model)[-1]


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Return the decoder layers of a (possibly wrapped) causal LM, in order.

    See the module docstring for the lookup order. Forward hooks registered on the
    returned layers see the residual stream after each layer.

    Args:
        model: a causal LM, bare or wrapped (PEFT, DDP, DeepSpeed, ``torch.compile``...).

    Returns:
        The ``nn.ModuleList`` holding the decoder layers (the model's own object).

    Raises:
        ModelLayoutError: no ``ModuleList`` looks like the decoder layers. The message
            names the model class and lists every ``ModuleList`` found.
    """
    base = unwrap_model(model)
    found = _search_decoder_layers(base)
    if found is not None:
        return found
    lists = _module_lists(base)
    raise ModelLayoutError(
        f"cannot find the decoder layers of {model_id_string(model)}: no ModuleList matches "
        f"_can_record_outputs['hidden_states'], GradientCheckpointingLayer, _no_split_modules "
        f"{sorted(_no_split_names(base))} or a known path ({', '.join(KNOWN_LAYER_PATHS[:5])}, ...). "
        f"ModuleLists found:\n{_describe_lists(lists)}"
    )


def num_layers(model: nn.Module) -> int:
    """Number of decoder layers of a (possibly wrapped) model, counted from the modules.

    Raises:
        ModelLayoutError: the decoder layers cannot be found.
    """
    return len(find_decoder_layers(model))


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream, from the unwrapped model's (text) config.

    Reads ``hidden_size``, ``n_embd`` or ``d_model``, using ``get_text_config()`` for
    multimodal configs.

    Raises:
        ModelLayoutError: the model has no config or the config names no width.
    """
    config = _text_config(getattr(unwrap_model(model), "config", None))
    for attr in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, attr, None) if config is not None else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if config is None:
        problem = "it has no config"
    else:
        problem = f"{type(config).__name__} has no hidden_size, n_embd or d_model"
    raise ModelLayoutError(f"cannot read the hidden size of {type(unwrap_model(model)).__name__}: {problem}")


def hidden_from_output(output: Any) -> torch.Tensor:
    """The hidden state in a decoder layer's output.

    Accepts a tensor, a tuple/list whose first element is the hidden state, or a
    mapping / ``ModelOutput`` whose first field is.

    Raises:
        ModelLayoutError: no tensor where the hidden state should be.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, Mapping) and output:
        first = next(iter(output.values()))
        if isinstance(first, torch.Tensor):
            return first
    raise ModelLayoutError(
        f"cannot find the hidden state in a decoder-layer output of type {type(output).__name__}: "
        "expected a tensor, a tuple/list starting with a tensor, "
        "or a ModelOutput whose first field is a tensor"
    )


def replace_hidden_in_output(output: Any, new_hidden: torch.Tensor) -> Any:
    """Return ``output`` with its hidden state replaced by ``new_hidden``; ``output`` is not modified.

    The structure is kept: a tensor gives ``new_hidden``, a tuple ``(new,) + out[1:]``
    (named tuples keep their type), a list a new list, a ``ModelOutput`` or dict a
    shallow copy with the first field swapped.

    Raises:
        ModelLayoutError: ``output`` has no hidden state (see :func:`hidden_from_output`).
    """
    hidden_from_output(output)  # validates the structure
    if isinstance(output, torch.Tensor):
        return new_hidden
    if isinstance(output, tuple):
        if hasattr(output, "_fields"):  # namedtuple
            return type(output)(new_hidden, *output[1:])
        return (new_hidden,) + tuple(output[1:])
    if isinstance(output, list):
        return [new_hidden, *output[1:]]
    first_key = next(iter(output.keys()))
    if dataclasses.is_dataclass(output):  # transformers ModelOutput
        values = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
        values[first_key] = new_hidden
        return type(output)(**values)
    return {**output, first_key: new_hidden}


def final_norm_and_unembedding(model: nn.Module) -> tuple[nn.Module | None, torch.Tensor]:
    """The final norm and the LM head weight, for logit-lens readouts.

    ``norm(h) @ weight.T`` turns a residual-stream vector ``h`` into logits (before
    any final logit soft-capping, as in Gemma 2).

    Returns:
        ``(norm, weight)``: the norm applied after the last decoder layer (None if the
        model has none) and the LM head weight of shape ``[vocab, hidden]`` (the
        embedding matrix when they are tied).

    Raises:
        ModelLayoutError: the model has no LM head, or its weight is not a full
            ``[vocab, hidden]`` matrix (e.g. partitioned by DeepSpeed ZeRO-3: gather it
            with ``deepspeed.zero.GatheredParameters`` first).
    """
    base = unwrap_model(model)
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ModelLayoutError(
            f"{model_id_string(model)} has no LM head (get_output_embeddings() gave "
            f"{type(head).__name__}); load it as a causal LM (AutoModelForCausalLM)"
        )
    if weight.dim() != 2 or weight.numel() == 0:
        raise ModelLayoutError(
            f"the LM head weight of {model_id_string(model)} has shape {tuple(weight.shape)}, "
            f"expected [vocab, hidden]; under DeepSpeed ZeRO-3 gather it first"
        )
    return _find_final_norm(base), weight


def _find_final_norm(base: nn.Module) -> nn.Module | None:
    """The norm after the last decoder layer.

    A known attribute path, else the first norm-like module registered after the
    decoder-layer list in the same parent (the backbone).
    """
    for path in KNOWN_FINAL_NORM_PATHS:
        found = _get_path(base, path)
        if isinstance(found, nn.Module) and _looks_like_norm(found):
            return found
    layers = _search_decoder_layers(base)
    if layers is None:
        return None
    for parent in base.modules():
        children = list(parent.children())
        if any(c is layers for c in children):
            after = children[next(i for i, c in enumerate(children) if c is layers) + 1 :]
            norms = [c for c in after if _looks_like_norm(c)]
            return norms[0] if norms else None
    return None


def _looks_like_norm(module: nn.Module) -> bool:
    """True for LayerNorm / RMSNorm modules and classes named ``*Norm*``."""
    norm_types = tuple(t for t in (nn.LayerNorm, getattr(nn, "RMSNorm", None)) if t is not None)
    return isinstance(module, norm_types) or "norm" in type(module).__name__.lower()


def model_id_string(model: nn.Module) -> str:
    """A short description for error messages.

    E.g. ``"LlamaForCausalLM 'meta-llama/Llama-3.2-1B' (16 layers, hidden size 2048)"``.

    Wrappers are shown outside-in (``"DistributedDataParallel > PeftModelForCausalLM >
    LlamaForCausalLM ..."``). Never raises.
    """
    try:
        chain = _unwrap_chain(model)
    except ModelLayoutError:
        chain = [model]
    base = chain[-1]
    classes = " > ".join(type(m).__name__ for m in chain)
    config = getattr(base, "config", None)
    name = getattr(config, "_name_or_path", "") if config is not None else ""
    parts = [classes] + ([repr(name)] if name else [])

    layer_count: int | str = "?"
    try:
        layers = _search_decoder_layers(base)
    except Exception:  # noqa: BLE001 - descriptions must not fail
        layers = None
    if layers is not None:
        layer_count = len(layers)
    else:
        text_config = _text_config(config)
        for attr in ("num_hidden_layers", "n_layer", "num_layers"):
            value = getattr(text_config, attr, None)
            if isinstance(value, int):
                layer_count = value
                break
    try:
        width: int | str = hidden_size(base)
    except Exception:  # noqa: BLE001
        width = "?"
    return f"{' '.join(parts)} ({layer_count} layers, hidden size {width})"


def model_context_length(model: Any, tokenizer: Any) -> int | None:
    """The number of positions ``model`` accepts: the smaller of the config's ``max_position_embeddings`` and the
    tokenizer's ``model_max_length`` (ignoring the "unlimited" sentinel); ``None`` when neither is known."""
    candidates = [getattr(getattr(model, "config", None), "max_position_embeddings", None),
                  getattr(tokenizer, "model_max_length", None)]
    values = [int(c) for c in candidates if isinstance(c, int) and 0 < c < 1_000_000]
    return min(values) if values else None
