"""Prove a trainer + emoreg takes exactly the gradient of ``loss + coef * R``.

Two identical trainers take one SGD step (lr 1, no clipping, no weight decay),
one with emoreg attached. Parameters after the step differ by exactly the
penalty's gradient, ``coef * sum_i grad R_i / GA`` over the step's
micro-batches ``i``, which this module computes by hand from the micro-batches
the trainer really fed the model (recorded by a pre-hook), at the initial
parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from emoreg.models.layout import unwrap_model
from tests.regularizer_helpers import LayerOutputs, hand_penalty

SGD_ARGS = dict(learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0,
                warmup_steps=0, report_to="none", use_cpu=True, bf16=False, fp16=False, save_strategy="no",
                logging_steps=1, seed=0, data_seed=0, dataloader_drop_last=False)


class MicroBatchRecorder:
    """Record the kwargs of every training forward (grad enabled, training mode) of ``model``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []
        target = unwrap_model(model)
        self._handle = target.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if module.training and torch.is_grad_enabled():
            self.batches.append({k: v.detach().clone() for k, v in kwargs.items()
                                 if k in ("input_ids", "attention_mask", "labels") and isinstance(v, torch.Tensor)})

    def remove(self) -> None:
        self._handle.remove()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def hand_penalty_gradient(model0: torch.nn.Module, batches, vectors, rules, layers, coef: float, ga: int,
                          selection: str = "all") -> dict[str, torch.Tensor]:
    """``coef * sum_i grad R_i / ga`` at the parameters of ``model0`` (a copy is used)."""
    model = copy.deepcopy(model0).train()
    model.zero_grad()
    for batch in batches:
        with LayerOutputs(model) as recorded:
            model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        r = hand_penalty(recorded.outputs, batch["attention_mask"], vectors, rules, layers,
                         labels=batch.get("labels"), selection=selection)
        (coef * r / ga).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_penalty_gradient(before: dict, with_emoreg: dict, without: dict, expected: dict,
                            rtol: float = 1e-5, atol_fraction: float = 1e-6) -> None:
    """``without - with_emoreg`` (the extra descent) equals ``expected`` for every trainable parameter.

    Float32 tolerance: trainers compute parts of the loss in float32 (TRL's fused LM head), and the
    difference of two trained states loses digits, so the absolute tolerance is ``atol_fraction`` of
    the largest expected entry, and the relative tolerance ``rtol``.
    """
    assert expected, "the hand-computed penalty gradient is empty"
    scale = max(float(g.abs().max()) for g in expected.values())
    assert scale > 0, "the penalty gradient is zero: the test would prove nothing"
    checked = 0
    for name, grad in expected.items():
        key = next(k for k in with_emoreg if k.endswith(name) or name.endswith(k))
        extra = without[key] - with_emoreg[key]
        torch.testing.assert_close(extra, grad.to(extra.dtype), rtol=rtol, atol=atol_fraction * scale, msg=key)
        checked += 1
    assert checked == len(expected)


def one_step(make_trainer: Callable, attach_emoreg: Callable | None):
    """Build a trainer, optionally attach emoreg, record micro-batches, take its steps; return (trainer, batches)."""
    trainer = make_trainer()
    if attach_emoreg is not None:
        attach_emoreg(trainer)
    recorder = MicroBatchRecorder(trainer.model)
    try:
        trainer.train()
    finally:
        recorder.remove()
    return trainer, recorder.batches
