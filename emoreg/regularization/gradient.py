"""Send a penalty's gradient through the trainer's own backward pass.

``add_penalty_gradient(hidden, penalty, scale)`` returns ``hidden`` unchanged in
the forward pass; in the backward pass it passes the hidden state's gradient
through and also sends the constant ``scale`` into ``penalty`` (the pattern of
Megatron-LM's ``MoEAuxLossAutoScaler``). Because ``penalty`` was computed from
``hidden``, the parameters then receive ``scale * dR/dtheta`` on top of the
loss's own gradient: exactly the gradient of ``loss + scale * R``, whatever
loss the trainer computes (SFT, DPO, GRPO, ...), without touching the trainer.
``scale`` must carry the coefficient and the trainer's loss scaling (gradient
accumulation, fp16 loss scale).
"""

from __future__ import annotations

import torch


class _PenaltyGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, penalty: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = float(scale)
        ctx.penalty_dtype = penalty.dtype
        ctx.penalty_device = penalty.device
        ctx.penalty_shape = penalty.shape
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx, grad_hidden: torch.Tensor):
        grad_penalty = torch.full(ctx.penalty_shape, ctx.scale, dtype=ctx.penalty_dtype, device=ctx.penalty_device)
        return grad_hidden, grad_penalty, None


def add_penalty_gradient(hidden: torch.Tensor, penalty: torch.Tensor, scale: float) -> torch.Tensor:
    """Return ``hidden``; its backward also gives ``penalty`` the gradient ``scale``."""
    return _PenaltyGradient.apply(hidden, penalty, scale)


def in_backward_pass() -> bool:
    """True while autograd runs a backward pass (e.g. a checkpoint recompute)."""
    graph_task_id = getattr(torch._C, "_current_graph_task_id", None)
    return graph_task_id is not None and graph_task_id() != -1
