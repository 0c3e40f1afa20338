"""The :class:`Regularizer`: scoped hooks that penalise, edit and measure emotion activations.

It owns every hook it installs and nothing global; hooks exist only between
:meth:`Regularizer.attach` and :meth:`Regularizer.detach` (or inside ``with``).

* **Context hooks** (forward pre-hooks with kwargs) on the model and its
  wrappers read ``attention_mask``, ``position_ids``, ``labels`` and
  ``completion_mask`` of each forward call, for token selection.
* **Layer hooks** (forward hooks) on the chosen decoder layers compute
  projections on the selected tokens (metrics), the penalty ``R`` and the
  interventions.
* A **generate wrapper** marks generation calls, where no penalty is computed
  and interventions apply only with ``during_generation``.

Adaptive directions (``config.refit``, :mod:`emoreg.regularization.refit`):
:meth:`Regularizer.refit` re-extracts the penalised emotions' directions from
the current model and penalises along them too (rows ``<emotion>@refit``);
the first one must run before the first training forward (``EmoRegCallback``
runs it at the start of training and every ``refit.every`` optimizer steps; in
a hand-written loop call ``reg.refit()`` once before training, and
:meth:`Regularizer.step` refits when due). While :meth:`Regularizer.suspended`
is active the hooks do nothing at all (the refit read uses it).

Penalties and interventions act only in *training forward passes*: the layer
is in training mode, gradients are enabled, and autograd is not replaying a
checkpoint. Evaluation, ``torch.no_grad`` passes (DPO/KTO reference and KL
passes, GRPO old log-probs) and generation add no penalty, record no metric
and leave the outputs untouched.

Two ways for the penalty to reach the gradient:

* ``inject="explicit"`` (hand-written loops): ``loss = loss + reg.penalty()``.
* ``inject="autograd"`` (trainer integrations): the penalty's gradient is sent
  through the trainer's own backward (see :mod:`emoreg.regularization.gradient`)
  scaled by ``coef * gradient_scale``; the integration sets ``gradient_scale``
  to ``loss_scale / gradient_accumulation_steps``.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from emoreg.errors import ConfigError
from emoreg.models.layout import (
    find_decoder_layers,
    hidden_from_output,
    replace_hidden_in_output,
    unwrap_model,
    wrapper_chain,
)
from emoreg.regularization.config import RegularizerConfig
from emoreg.regularization.gradient import add_penalty_gradient, in_backward_pass
from emoreg.regularization.metrics import LayerMetrics, all_reduce_sum
from emoreg.regularization.plan import LayerPlan, build_plan, intervene, penalty_terms
from emoreg.regularization.refit import ReadConfig, RefitDirection, RefitReader
from emoreg.regularization.schedule import scheduled_coef
from emoreg.regularization.selection import BatchContext, content_positions, select_tokens
from emoreg.vectors.bundle import EmotionVectors

logger = logging.getLogger(__name__)

_OWNER_ATTRIBUTE = "_emoreg_regularizer"
_CONTEXT_KEYS = ("attention_mask", "position_ids", "labels", "completion_mask")


class Regularizer:
    """Penalise, edit and measure emotion-vector activations of ``model``'s decoder layers.

    Args:
        model: the model being trained (bare, PEFT, DDP or DeepSpeed-wrapped).
        vectors: the emotion-vector bundle (checked against the model).
        config: a :class:`RegularizerConfig` or a dict.
        inject: ``"explicit"`` (call :meth:`penalty`) or ``"autograd"``.
        tokenizer: the model's tokenizer; needed (only) with ``config.refit``, whose texts it
            tokenises once, here.

    Example (plain loop)::

        with Regularizer(model, vectors, {"emotions": {"desperate": 1.0}, "kind": "hinge"}) as reg:
            for batch in loader:
                loss = model(**batch).loss + reg.penalty()
                loss.backward(); optimizer.step(); optimizer.zero_grad()
                reg.step()                       # advance the coefficient schedule
    """

    def __init__(
        self,
        model: nn.Module,
        vectors: EmotionVectors | str,
        config: RegularizerConfig | dict[str, Any],
        *,
        inject: str = "explicit",
        tokenizer: Any = None,
    ) -> None:
        if inject not in ("explicit", "autograd"):
            raise ConfigError(f"inject must be 'explicit' or 'autograd', got {inject!r}")
        self.model = model
        self.vectors = EmotionVectors.from_pretrained(vectors) if isinstance(vectors, str) else vectors
        self.config = RegularizerConfig.coerce(config)
        self.inject = inject
        self.vectors.check_model(model, allow_different_weights=self.config.allow_different_weights)
        layers = self.config.layers if self.config.layers is not None else [self.vectors.default_layer]
        model_layers = find_decoder_layers(model)
        for layer in layers:
            self.vectors.layer_index(layer)
            if not 0 <= layer < len(model_layers):
                raise ConfigError(f"layer {layer} is out of range: the model has {len(model_layers)} decoder layers")
        rules = self.config.rules()
        self._rules = rules
        self._refit_reader: RefitReader | None = None
        self._refit: dict[int, dict[str, RefitDirection]] | None = None
        self._refit_count = 0
        self._refit_step: int | None = None
        if self.config.refit is not None:
            if tokenizer is None:
                raise ConfigError("refit needs the model's tokenizer: pass Regularizer(..., tokenizer=tokenizer) "
                                  "(EmoRegCallback takes it from the trainer's processing_class)")
            self._refit_reader = RefitReader(tokenizer, self.config.refit_emotions, self.config.refit,
                                             ReadConfig.from_bundle(self.vectors))
        self._plans = {layer: self._build_plan(layer) for layer in layers}
        self._device_plans: dict[tuple[int, torch.device, torch.dtype], LayerPlan] = {}
        self._metrics = {layer: LayerMetrics(plan) for layer, plan in self._plans.items()}
        self.gradient_scale = 1.0
        self.total_steps = self.config.total_steps
        self._step = 0
        self._handles: list[Any] = []
        self._context = BatchContext()
        self._depth = 0
        self._generation_depth = 0
        self._suspended = 0
        self._patched_generate: nn.Module | None = None
        self._pending: list[torch.Tensor] = []
        self._skipped_nonfinite = 0
        self._warned_pending = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def layers(self) -> list[int]:
        """The decoder layers it acts on (the config's ``layers``, else the bundle's default layer)."""
        return list(self._plans)

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> Regularizer:
        """Install the hooks (idempotent for this regulariser; an error if another one owns the model)."""
        if self.attached:
            return self
        base = unwrap_model(self.model)
        owner = attached_regularizer(base)
        if owner is not None and owner is not self:
            raise ConfigError("another emoreg Regularizer is already attached to this model; detach it first")
        try:
            chain = wrapper_chain(self.model)
            backbone = getattr(base, "base_model", None)
            if isinstance(backbone, nn.Module) and backbone is not base and all(backbone is not m for m in chain):
                chain.append(backbone)
            for module in chain:
                self._handles.append(module.register_forward_pre_hook(self._context_pre_hook, with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._context_post_hook, always_call=True))
            layers = find_decoder_layers(self.model)
            for layer in self._plans:
                self._handles.append(layers[layer].register_forward_hook(self._make_layer_hook(layer)))
            self._patch_generate(base)
            setattr(base, _OWNER_ATTRIBUTE, self)
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        """Remove every hook and the generate wrapper; the model is exactly as before."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._patched_generate is not None:
            self._patched_generate.__dict__.pop("generate", None)
            self._patched_generate = None
        base = unwrap_model(self.model)
        if attached_regularizer(base) is self:
            delattr(base, _OWNER_ATTRIBUTE)
        self._depth = 0
        self._generation_depth = 0
        self._context = BatchContext()

    def __enter__(self) -> Regularizer:
        return self.attach()

    @contextmanager
    def suspended(self) -> Iterator[Regularizer]:
        """Inside the block every hook of this regulariser does nothing: no penalty, intervention, metric,
        nor change to the batch context (forwards of emoreg's own reads, such as refits). Nestable."""
        self._suspended += 1
        try:
            yield self
        finally:
            self._suspended -= 1

    def __exit__(self, *exc) -> None:
        self.detach()

    # ------------------------------------------------------------------ schedule
    @property
    def step_count(self) -> int:
        """Optimizer steps taken so far (the schedule's position)."""
        return self._step

    def set_step(self, step: int) -> None:
        self._step = int(step)

    def step(self) -> None:
        """Advance the schedule by one optimizer step (hand-written loops); refit when due (``refit.every``)."""
        self._step += 1
        if self.refit_due(self._step):
            self.refit()

    # ------------------------------------------------------------------ adaptive directions
    @property
    def refit_enabled(self) -> bool:
        return self._refit_reader is not None

    @property
    def refit_ready(self) -> bool:
        """Whether refitted directions exist (computed by :meth:`refit` or restored)."""
        return self._refit is not None

    def refit_due(self, step: int) -> bool:
        """Whether a refit is due after optimizer step ``step`` (a positive multiple of ``refit.every``)."""
        return self.refit_enabled and step > 0 and step % self.config.refit.every == 0

    @property
    def refit_directions(self) -> dict[int, dict[str, RefitDirection]] | None:
        """The refitted directions in use, ``{layer: {emotion: RefitDirection}}`` (None before the first refit)."""
        return None if self._refit is None else {layer: dict(by) for layer, by in self._refit.items()}

    def refit(self, step: int | None = None) -> dict[int, dict[str, RefitDirection]]:
        """Re-extract the penalised emotions' directions from the current model and penalise along them.

        Every rank must call it at the same points (the read is a forward pass on every rank, collective
        under ZeRO-3). The read runs with this regulariser suspended, in eval mode under ``no_grad``, and
        leaves every module's train/eval flag as it was. ``step`` (default: the schedule position) is
        recorded with the directions.
        """
        if self._refit_reader is None:
            raise ConfigError("refit() needs config.refit, e.g. refit={'every': 50}")
        layers = list(self._plans)
        fixed = {layer: {e: self.vectors.direction(e, layer) for e in self._refit_reader.emotions} for layer in layers}
        percentiles = {rule.emotion: rule.threshold_percentile for rule in self._rules if rule.mode == "penalty"}
        with self.suspended():
            directions = self._refit_reader.refit(self.model, layers, fixed, percentiles)
        self._set_refit(directions)
        self._refit_count += 1
        self._refit_step = self._step if step is None else int(step)
        logger.info("emoreg: refitted %s at step %d (cos with the fixed directions: %s)",
                    self._refit_reader.emotions, self._refit_step,
                    {f"{e}/L{layer}": round(d.cos, 4) for layer, by in directions.items() for e, d in by.items()})
        return self.refit_directions

    def _build_plan(self, layer: int) -> LayerPlan:
        refit = None
        if self._refit_reader is not None:
            if self._refit is not None:
                refit = self._refit[layer]
            else:  # placeholders until the first refit, so the plans' rows (and metrics) never change shape;
                # a training forward before the first refit is refused (see the layer hook)
                refit = {e: RefitDirection(self.vectors.direction(e, layer), 0.0, 1.0, float("nan"), 0.0, 1.0)
                         for e in self._refit_reader.emotions}
        weight = self.config.refit.weight if self.config.refit is not None else 1.0
        return build_plan(self.vectors, layer, self._rules, self.config.log_emotions, refit=refit, refit_weight=weight)

    def _set_refit(self, directions: dict[int, dict[str, RefitDirection]]) -> None:
        expected = {(layer, e) for layer in self._plans for e in self._refit_reader.emotions}
        got = {(layer, e) for layer, by in directions.items() for e in by}
        if got != expected:
            raise ConfigError(f"refitted directions for {sorted(got)} do not match this regulariser's "
                              f"penalised emotions and layers {sorted(expected)}")
        self._refit = {layer: dict(directions[layer]) for layer in self._plans}
        self._plans = {layer: self._build_plan(layer) for layer in self._plans}
        self._device_plans = {}

    def refit_state_dict(self) -> dict[str, torch.Tensor]:
        """The refitted directions as flat tensors (for safetensors): ``L<layer>/<emotion>/direction`` ``[d]`` and
        ``L<layer>/<emotion>/stats`` ``[mean, std, p95, threshold_raw, cos]``; empty before the first refit."""
        tensors: dict[str, torch.Tensor] = {}
        for layer, by in (self._refit or {}).items():
            for emotion, fitted in by.items():
                tensors[f"L{layer}/{emotion}/direction"] = fitted.direction.contiguous()
                tensors[f"L{layer}/{emotion}/stats"] = fitted.to_tensor()
        return tensors

    def load_refit_state_dict(self, tensors: dict[str, torch.Tensor], *, count: int = 1,
                              step: int | None = None) -> None:
        """Use the refitted directions of :meth:`refit_state_dict` (a resumed run continues with them)."""
        if self._refit_reader is None:
            raise ConfigError("refitted directions were given but config.refit is not set")
        directions: dict[int, dict[str, RefitDirection]] = {}
        for key, value in tensors.items():
            if not key.endswith("/direction"):
                continue
            layer_name, emotion, _ = key.split("/")
            stats = tensors.get(f"{layer_name}/{emotion}/stats")
            if stats is None or not layer_name.startswith("L"):
                raise ConfigError(f"refit state: {key} has no matching statistics")
            if value.shape != (self.vectors.hidden_size,):
                raise ConfigError(f"refit state: {key} has shape {tuple(value.shape)}, the model's hidden size is "
                                  f"{self.vectors.hidden_size}")
            directions.setdefault(int(layer_name[1:]), {})[emotion] = RefitDirection.from_tensors(value, stats)
        self._set_refit(directions)
        self._refit_count = int(count)
        self._refit_step = step

    @property
    def coef(self) -> float:
        """The penalty coefficient at the current step."""
        return scheduled_coef(self.config.coef, self._step, schedule=self.config.schedule,
                              warmup_steps=self.config.warmup_steps, total_steps=self.total_steps)

    # ------------------------------------------------------------------ explicit penalty
    def penalty(self) -> torch.Tensor:
        """``coef * R`` summed over the training forward passes since the last call (explicit mode).

        Returns a zero tensor when no training forward ran. Add it to the loss before ``backward``.
        """
        if self.inject != "explicit":
            raise ConfigError("penalty() is for inject='explicit'; with 'autograd' the gradient is already sent")
        pending, self._pending = self._pending, []
        self._warned_pending = False
        if not pending:
            device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
            return torch.zeros((), device=device)
        return self.coef * torch.stack([r.to(pending[0].device) for r in pending]).sum()

    # ------------------------------------------------------------------ metrics
    def metrics(self, *, reset: bool = True) -> dict[str, float]:
        """Per-emotion, per-layer metrics since the last call, reduced across ranks.

        Every rank must call this at the same points (it all-reduces when a process group runs).
        """
        device = _reduction_device(self.model)
        layers = list(self._metrics)
        flat = torch.cat([self._metrics[layer].pending(device) for layer in layers]
                         + [torch.tensor([float(self._skipped_nonfinite)], dtype=torch.float64, device=device)])
        flat = all_reduce_sum(flat).cpu()
        out: dict[str, float] = {"emoreg/coef": self.coef}
        offset = 0
        for layer in layers:
            width = self._metrics[layer]._width()
            out.update(self._metrics[layer].summarize(flat[offset:offset + width], layer))
            offset += width
        if float(flat[-1]):
            out["emoreg/nonfinite_skipped"] = float(flat[-1])
        if self._refit is not None:  # the same on every rank (rank 0's directions are broadcast)
            for layer, by in self._refit.items():
                for emotion, fitted in by.items():
                    out[f"emoreg/refit_cos/{emotion}/L{layer}"] = fitted.cos
            out["emoreg/refit_count"] = float(self._refit_count)
        if reset:
            for layer_metrics in self._metrics.values():
                layer_metrics.reset()
            self._skipped_nonfinite = 0
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The schedule position (the run's ``total_steps`` comes from its own trainer or config), and with
        ``refit`` how many refits ran and at which step the last one did (the directions themselves:
        :meth:`refit_state_dict`)."""
        state: dict[str, Any] = {"step": self._step, "total_steps": self.total_steps}
        if self._refit is not None:
            state["refit"] = {"count": self._refit_count, "step": self._refit_step}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step = int(state.get("step", 0))

    # ------------------------------------------------------------------ hooks
    def _context_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._suspended:
            return
        self._depth += 1
        values = _call_values(module, args, kwargs)
        if self._depth == 1:
            self._context = BatchContext(**{k: values.get(k) for k in _CONTEXT_KEYS})
        else:
            for key in ("attention_mask", "position_ids"):
                if values.get(key) is not None:
                    setattr(self._context, key, values[key])

    def _context_post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._suspended:
            return
        self._depth = max(0, self._depth - 1)

    def _patch_generate(self, base: nn.Module) -> None:
        original = getattr(base, "generate", None)
        if original is None:
            return

        def generate(*args, **kwargs):
            self._generation_depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self._generation_depth -= 1

        base.generate = generate
        self._patched_generate = base

    def _plan_on(self, layer: int, hidden: torch.Tensor) -> LayerPlan:
        """The layer's plan on the hidden state's device, in float32 (float64 for float64 models); cached."""
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        key = (layer, hidden.device, dtype)
        plan = self._device_plans.get(key)
        if plan is None:
            plan = self._plans[layer].to(hidden.device, dtype)
            self._device_plans[key] = plan
        return plan

    def _make_layer_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: Any):
            if self._suspended:
                return None
            generating = self._generation_depth > 0
            training_pass = module.training and torch.is_grad_enabled() and not generating and not in_backward_pass()
            intervene_now = training_pass or (generating and self.config.during_generation)
            if not (training_pass or intervene_now):
                return None
            if training_pass and self._refit_reader is not None and self._refit is None:
                raise ConfigError("config.refit is set but no refit has run: call reg.refit() before the first "
                                  "training step (EmoRegCallback does it at the start of training)")
            hidden = hidden_from_output(output)
            plan = self._plan_on(layer, hidden)
            batch, length = hidden.shape[0], hidden.shape[1]
            if training_pass:
                mask = select_tokens(self._context, self.config.selection, batch, length,
                                     self.config.sink_tokens, hidden.device)
            else:
                mask = content_positions(self._context, batch, length, self.config.sink_tokens, hidden.device)
            new_hidden = hidden
            if training_pass:
                new_hidden = self._penalize_and_record(layer, plan, hidden, mask)
            if intervene_now and plan.has_intervention:
                new_hidden = intervene(plan, new_hidden, mask)
            if new_hidden is hidden:
                return None
            return replace_hidden_in_output(output, new_hidden)

        return hook

    def _penalize_and_record(self, layer: int, plan: LayerPlan, hidden: torch.Tensor,
                             mask: torch.Tensor) -> torch.Tensor:
        # Projections of every position (a [B, T, E] product), then masked sums: no gather/scatter of the
        # [B, T, d] hidden state. Unselected positions are zeroed *before* the penalty function, so a NaN on a
        # padding row can reach neither the penalty nor its gradient.
        projections = hidden.to(plan.directions.dtype) @ plan.directions.T  # [B, T, E]
        selected = mask.unsqueeze(-1)
        projections = torch.where(selected, projections, torch.zeros((), dtype=projections.dtype,
                                                                      device=projections.device))
        count = mask.sum()
        sums = projections.sum(dim=(0, 1))  # [E]
        values = None
        if plan.has_penalty:
            values = torch.where(selected, penalty_terms(plan, projections),
                                 torch.zeros((), dtype=projections.dtype, device=projections.device))
            penalty_sums = values.sum(dim=(0, 1))  # [P]
        if not bool(torch.isfinite(sums).all()):
            bad = [e for e, ok in zip(plan.emotions, torch.isfinite(sums).tolist()) if not ok]
            warnings.warn(f"emoreg: non-finite activations at layer {layer} (emotions {bad}); "
                          "this step's penalty and metrics at that layer are skipped", stacklevel=2)
            self._skipped_nonfinite += 1
            return hidden
        above = ((projections.detach() > plan.p95) & selected).sum(dim=(0, 1))
        self._metrics[layer].record(plan, count.detach(), sums.detach(), above,
                                    penalty_sums.detach() if values is not None else None)
        if values is None or int(count) == 0:
            return hidden
        penalty = (penalty_sums / count * plan.penalty_weight).sum()
        if self.inject == "explicit":
            self._pending.append(penalty)
            if len(self._pending) > 1000 and not self._warned_pending:
                warnings.warn("emoreg: 1000 penalties are waiting; call reg.penalty() after each forward "
                              "(or use inject='autograd')", stacklevel=2)
                self._warned_pending = True
            return hidden
        scale = self.coef * self.gradient_scale
        if scale == 0.0 or not hidden.requires_grad:
            return hidden
        return add_penalty_gradient(hidden, penalty, scale)


def attached_regularizer(model: nn.Module) -> Regularizer | None:
    """The :class:`Regularizer` attached to ``model``, or ``None``.

    A regulariser marks the unwrapped model it hooks (:func:`~emoreg.models.layout.unwrap_model`) while it is
    attached; ``model`` is looked at as given, not unwrapped.
    """
    return getattr(model, _OWNER_ATTRIBUTE, None)


def _call_values(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The context keys of a forward call, binding positional arguments by the forward's signature."""
    values = {k: kwargs.get(k) for k in _CONTEXT_KEYS if kwargs.get(k) is not None}
    if args:
        try:
            bound = inspect.signature(module.forward).bind_partial(*args)
        except (TypeError, ValueError):
            return values
        for key in _CONTEXT_KEYS:
            if key not in values and isinstance(bound.arguments.get(key), torch.Tensor):
                values[key] = bound.arguments[key]
    return values


def _reduction_device(model: nn.Module) -> torch.device:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
