"""Tests of emoreg.models.layout: decoder layers, output format, wrappers, logit lens."""

from __future__ import annotations

import contextlib
import importlib
import socket
import subprocess
import sys
from collections import namedtuple
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn
from transformers import LlamaModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils.output_capturing import OutputRecorder

from emoreg.errors import ModelLayoutError
from emoreg.models import (
    final_norm_and_unembedding,
    find_decoder_layers,
    hidden_from_output,
    hidden_size,
    model_id_string,
    num_layers,
    replace_hidden_in_output,
    unwrap_model,
)
from tests.tiny_models import (
    ARCHITECTURES,
    TINY_VOCAB_SIZE,
    make_tiny_config,
    make_tiny_model,
    make_tiny_tokenizer,
)

#: Where each architecture keeps its decoder layers.
EXPECTED_LAYER_PATH = {arch: "model.layers" for arch in ARCHITECTURES} | {
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}

BATCH, SEQ = 2, 7


def _input_ids(seed: int = 0) -> torch.Tensor:
    """A [BATCH, SEQ] batch of non-special token ids."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(6, TINY_VOCAB_SIZE, (BATCH, SEQ), generator=generator)


def _get_path(module: nn.Module, path: str) -> nn.Module:
    """``module.a.b`` for ``path='a.b'``."""
    for part in path.split("."):
        module = getattr(module, part)
    return module


@contextlib.contextmanager
def _recording_hooks(layers: nn.ModuleList) -> Iterator[list[object]]:
    """Record each layer's raw output during the forward passes run inside the block."""
    outputs: list[object] = []
    handles = [layer.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for layer in layers]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _single_process_group() -> Iterator[None]:
    """A world-size-1 gloo process group, destroyed on exit."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _lora(model: PreTrainedModel) -> nn.Module:
    """``model`` wrapped by PEFT LoRA on the attention projections."""
    peft = pytest.importorskip("peft")
    targets = {"gpt2": ["c_attn"], "gpt_neox": ["query_key_value"], "phi3": ["qkv_proj"]}
    target_modules = targets.get(model.config.model_type, ["q_proj"])
    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=2,
        lora_alpha=4,
        target_modules=target_modules,
        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2 uses Conv1D (weights transposed)
    )
    return peft.get_peft_model(model, config)


# --------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_decoder_layers_found_and_outputs_are_hidden_states(arch: str) -> None:
    model = make_tiny_model(arch, num_layers=3, hidden_size=32)
    layers = find_decoder_layers(model)

    assert layers is _get_path(model, EXPECTED_LAYER_PATH[arch])
    assert len(layers) == num_layers(model) == 3
    assert hidden_size(model) == 32
    with _recording_hooks(layers) as outputs, torch.no_grad():
        model(_input_ids())
    assert len(outputs) == 3
    for out in outputs:
        # transformers 5.24: all ten architectures return a bare tensor from their decoder layers.
        assert isinstance(out, torch.Tensor), f"{arch} layer returned {type(out).__name__}"
        assert hidden_from_output(out).shape == (BATCH, SEQ, 32)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logit_lens_of_last_layer_reproduces_logits(arch: str) -> None:
    model = make_tiny_model(arch, num_layers=2)
    norm, weight = final_norm_and_unembedding(model)
    assert norm is not None
    assert weight.shape == (TINY_VOCAB_SIZE, 64)
    if model.config.tie_word_embeddings:
        assert weight is model.get_input_embeddings().weight

    layers = find_decoder_layers(model)
    with _recording_hooks(layers[-1:]) as outputs, torch.no_grad():
        logits = model(_input_ids()).logits
        last = hidden_from_output(outputs[0])[0, -1]  # [d]
        lens = norm(last) @ weight.T
    assert lens.shape == (TINY_VOCAB_SIZE,)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:  # Gemma 2 caps the logits after the LM head
        lens = torch.tanh(lens / softcap) * softcap
    torch.testing.assert_close(lens, logits[0, -1], rtol=1e-4, atol=1e-5)


def test_replacing_a_layer_output_in_a_hook_changes_the_forward(tiny_llama: PreTrainedModel) -> None:
    layers = find_decoder_layers(tiny_llama)
    ids = _input_ids()
    with torch.no_grad():
        before = tiny_llama(ids).logits
        handle = layers[1].register_forward_hook(
            lambda _m, _a, out: replace_hidden_in_output(out, torch.zeros_like(hidden_from_output(out)))
        )
        try:
            after = tiny_llama(ids).logits
        finally:
            handle.remove()
        again = tiny_llama(ids).logits
    assert not torch.allclose(before, after)
    torch.testing.assert_close(before, again)


# --------------------------------------------------------------------------- output helpers


def test_hidden_from_output_on_each_structure() -> None:
    h = torch.randn(2, 3, 4)
    extra = torch.randn(2, 1, 3, 3)
    assert hidden_from_output(h) is h
    assert hidden_from_output((h, extra)) is h
    assert hidden_from_output((h,)) is h
    assert hidden_from_output([h, None]) is h
    assert hidden_from_output(BaseModelOutputWithPast(last_hidden_state=h)) is h
    assert hidden_from_output({"hidden": h, "attn": extra}) is h


@pytest.mark.parametrize("bad", [None, (), [], (None, torch.zeros(1)), "text", {"a": 1}])
def test_hidden_from_output_rejects_outputs_without_a_tensor(bad: object) -> None:
    with pytest.raises(ModelLayoutError, match="hidden state"):
        hidden_from_output(bad)


def test_replace_hidden_keeps_structure_and_does_not_modify_the_original() -> None:
    h, new = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    h_copy = h.clone()
    extra = torch.randn(5)

    assert replace_hidden_in_output(h, new) is new

    original_tuple = (h, extra, None)
    out = replace_hidden_in_output(original_tuple, new)
    assert type(out) is tuple and out[0] is new and out[1] is extra and out[2] is None
    assert original_tuple[0] is h

    original_list = [h, extra]
    out = replace_hidden_in_output(original_list, new)
    assert out == [new, extra] and out is not original_list and original_list[0] is h

    Pair = namedtuple("Pair", ["hidden", "attn"])
    out = replace_hidden_in_output(Pair(h, extra), new)
    assert isinstance(out, Pair) and out.hidden is new and out.attn is extra

    model_output = BaseModelOutputWithPast(last_hidden_state=h, hidden_states=(h,))
    out = replace_hidden_in_output(model_output, new)
    assert type(out) is BaseModelOutputWithPast
    assert out.last_hidden_state is new and out[0] is new and out.hidden_states == (h,)
    assert model_output.last_hidden_state is h and model_output[0] is h

    mapping = {"hidden": h, "attn": extra}
    out = replace_hidden_in_output(mapping, new)
    assert out == {"hidden": new, "attn": extra} and mapping["hidden"] is h

    torch.testing.assert_close(h, h_copy)  # no tensor was written to either


def test_replace_hidden_rejects_outputs_without_a_tensor() -> None:
    with pytest.raises(ModelLayoutError):
        replace_hidden_in_output((None,), torch.zeros(1))


# --------------------------------------------------------------------------- wrappers


def test_peft_lora_is_unwrapped(tiny_llama: PreTrainedModel) -> None:
    peft_model = _lora(tiny_llama)
    assert unwrap_model(peft_model) is tiny_llama
    assert unwrap_model(peft_model.base_model) is tiny_llama  # LoraModel: `.model`
    layers = find_decoder_layers(peft_model)
    assert layers is tiny_llama.model.layers
    assert num_layers(peft_model) == 4 and hidden_size(peft_model) == 64
    norm, weight = final_norm_and_unembedding(peft_model)
    assert norm is tiny_llama.model.norm and weight is tiny_llama.lm_head.weight
    assert model_id_string(peft_model).startswith("PeftModelForCausalLM > LlamaForCausalLM 'tiny-llama'")

    with _recording_hooks(layers) as outputs, torch.no_grad():
        peft_model(input_ids=_input_ids())
    assert [hidden_from_output(o).shape for o in outputs] == [(BATCH, SEQ, 64)] * 4


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "gemma3"])
def test_peft_lora_on_other_layouts(arch: str) -> None:
    model = make_tiny_model(arch, num_layers=2)
    assert find_decoder_layers(_lora(model)) is _get_path(model, EXPECTED_LAYER_PATH[arch])


def test_ddp_and_ddp_of_peft_are_unwrapped(tiny_llama: PreTrainedModel) -> None:
    with _single_process_group():
        ddp = nn.parallel.DistributedDataParallel(tiny_llama)
        assert unwrap_model(ddp) is tiny_llama
        assert find_decoder_layers(ddp) is tiny_llama.model.layers

        other = make_tiny_model("gpt2", num_layers=2)
        nested = nn.parallel.DistributedDataParallel(_lora(other))
        assert unwrap_model(nested) is other
        assert find_decoder_layers(nested) is other.transformer.h
        assert model_id_string(nested) == (
            "DistributedDataParallel > PeftModelForCausalLM > GPT2LMHeadModel 'tiny-gpt2' "
            "(2 layers, hidden size 64)"
        )


def test_torch_compile_wrapper_is_unwrapped(tiny_llama: PreTrainedModel) -> None:
    compiled = torch.compile(tiny_llama)  # compiles lazily: nothing is run here
    assert type(compiled).__name__ == "OptimizedModule"
    assert unwrap_model(compiled) is tiny_llama
    assert find_decoder_layers(compiled) is tiny_llama.model.layers

    peft_model = _lora(make_tiny_model("qwen3", num_layers=2))
    compiled_peft = torch.compile(peft_model)
    assert find_decoder_layers(compiled_peft) is peft_model.get_base_model().model.layers


def test_per_layer_compiled_layers_are_still_found(tiny_llama: PreTrainedModel) -> None:
    layers = tiny_llama.model.layers
    for i, layer in enumerate(layers):
        layers[i] = torch.compile(layer)  # as `model.compile()`-style per-block compilation does
    assert find_decoder_layers(tiny_llama) is layers


def test_deepspeed_engine_is_unwrapped(tiny_llama: PreTrainedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    deepspeed = pytest.importorskip("deepspeed")
    # `import deepspeed.comm.torch as m` would give torch itself: deepspeed.comm re-exports `torch`.
    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")

    # DeepSpeed JIT-compiles a shared-memory all-reduce op (~25 s, once per machine) when its
    # communication backend starts; with one process it is never used, so skip building it.
    monkeypatch.setattr(ds_comm_torch, "build_shm_op", lambda: None)
    for name, value in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)  # what a launcher would set
    with _single_process_group():
        engine, *_ = deepspeed.initialize(
            model=tiny_llama, config={"train_batch_size": 1, "zero_optimization": {"stage": 0}}
        )
        assert type(engine).__name__ == "DeepSpeedEngine"
        assert unwrap_model(engine) is tiny_llama
        assert find_decoder_layers(engine) is tiny_llama.model.layers
        assert model_id_string(engine).startswith("DeepSpeedEngine > LlamaForCausalLM")


def test_importing_layout_does_not_import_peft_or_deepspeed() -> None:
    code = (
        "import sys, emoreg.models.layout\n"
        "loaded = [m for m in ('peft', 'deepspeed') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------- fallbacks and errors


class _Block(nn.Module):
    """A stand-in decoder layer that is no transformers class."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x)


class _EncoderDecoder(nn.Module):
    """Two ModuleLists of _Block: a longer encoder and a shorter decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_Block() for _ in range(5))
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(_Block() for _ in range(2))


def test_can_record_outputs_as_class_name_string() -> None:
    model = _EncoderDecoder()
    model._can_record_outputs = {"hidden_states": "_Block"}
    assert find_decoder_layers(model) is model.encoder.layers  # longest match


def test_can_record_outputs_as_output_recorder_with_layer_name() -> None:
    model = _EncoderDecoder()
    model._can_record_outputs = {"hidden_states": OutputRecorder(_Block, layer_name="decoder.layers")}
    assert find_decoder_layers(model) is model.decoder.layers


def test_can_record_outputs_list_matches_mixed_layer_types() -> None:
    class _OtherBlock(_Block):
        pass

    model = nn.Module()
    model.layers = nn.ModuleList([_Block(), _OtherBlock(), _Block()])
    model.adapters = nn.ModuleList(nn.Linear(4, 4) for _ in range(6))
    model._can_record_outputs = {"hidden_states": [_Block, OutputRecorder(_OtherBlock)]}
    assert find_decoder_layers(model) is model.layers


def test_multimodal_model_prefers_the_language_model_layers() -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    text |= {"num_attention_heads": 4, "num_key_value_heads": 2, "bos_token_id": 1, "eos_token_id": 2}
    vision = {"depth": 5, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32}
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision))
    # The vision tower has more blocks (5) than the language model has layers (2), as in the 7B model.
    assert find_decoder_layers(model) is model.model.language_model.layers
    assert hidden_size(model) == 32
    norm, weight = final_norm_and_unembedding(model)
    assert norm is model.model.language_model.norm and weight.shape == (64, 32)


def test_no_split_modules_fallback_picks_longest() -> None:
    model = _EncoderDecoder()
    model._no_split_modules = ["_Block"]
    assert find_decoder_layers(model) is model.encoder.layers


def test_known_path_fallback() -> None:
    model = nn.Module()
    model.transformer = nn.Module()
    model.transformer.h = nn.ModuleList(_Block() for _ in range(3))
    assert find_decoder_layers(model) is model.transformer.h
    assert num_layers(model) == 3


def test_gradient_checkpointing_layer_fallback() -> None:
    from transformers.modeling_layers import GradientCheckpointingLayer

    class CheckpointedBlock(GradientCheckpointingLayer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    model = nn.Module()
    model.stack = nn.ModuleList(CheckpointedBlock() for _ in range(3))
    model.other = nn.ModuleList(nn.Linear(2, 2) for _ in range(6))
    assert find_decoder_layers(model) is model.stack


def test_unrecognised_model_lists_what_it_found() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model.heads = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU()])
    with pytest.raises(ModelLayoutError) as info:
        find_decoder_layers(model)
    message = str(info.value)
    assert "Sequential" in message
    assert "heads: 3 x Linear, ReLU" in message

    with pytest.raises(ModelLayoutError, match=r"Sequential.*\n.*no non-empty nn.ModuleList"):
        find_decoder_layers(nn.Sequential(nn.Linear(4, 4)))


def test_hidden_size_from_config_variants() -> None:
    with_d_model = nn.Module()
    with_d_model.config = SimpleNamespace(d_model=48)
    assert hidden_size(with_d_model) == 48

    multimodal = nn.Module()
    text = SimpleNamespace(hidden_size=96)
    vision = SimpleNamespace(hidden_size=8)
    multimodal.config = SimpleNamespace(vision_config=vision, get_text_config=lambda: text)
    assert hidden_size(multimodal) == 96

    with pytest.raises(ModelLayoutError, match="no config"):
        hidden_size(nn.Linear(2, 2))
    bare = nn.Module()
    bare.config = SimpleNamespace(vocab_size=10)
    with pytest.raises(ModelLayoutError, match="hidden_size, n_embd or d_model"):
        hidden_size(bare)


def test_backbone_without_lm_head_is_rejected() -> None:
    backbone = LlamaModel(make_tiny_config("llama", num_layers=2))
    assert num_layers(backbone) == 2  # the layers are found on a bare backbone too
    with pytest.raises(ModelLayoutError, match="no LM head"):
        final_norm_and_unembedding(backbone)


def test_model_id_string_never_raises() -> None:
    assert model_id_string(nn.Linear(2, 2)) == "Linear (? layers, hidden size ?)"
    gpt2 = make_tiny_model("gpt2", num_layers=2)
    assert model_id_string(gpt2) == "GPT2LMHeadModel 'tiny-gpt2' (2 layers, hidden size 64)"


# --------------------------------------------------------------------------- tiny_models helpers


def test_tiny_models_are_deterministic_and_leave_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = make_tiny_model("qwen2", seed=3), make_tiny_model("qwen2", seed=3)
    c = make_tiny_model("qwen2", seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert not a.training and a.config._attn_implementation == "eager"
    assert make_tiny_model("llama", dtype=torch.bfloat16).lm_head.weight.dtype == torch.bfloat16


def test_tiny_tokenizer(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    assert len(tok) == TINY_VOCAB_SIZE and tok.model_max_length == 512 and tok.padding_side == "right"
    assert None not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id)
    text = "Héllo, wörld! 🙂"
    assert tok.decode(tok(text).input_ids) == text
    batch = tok(["a", "abc"], padding=True)
    assert batch["input_ids"][0][1:] == [tok.pad_token_id] * 2 and batch["attention_mask"][0] == [1, 0, 0]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    )
    assert tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n"
    )
    assert make_tiny_tokenizer().get_vocab() == tok.get_vocab()
