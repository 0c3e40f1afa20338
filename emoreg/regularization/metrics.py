"""Per-emotion activation metrics, accumulated as sums and counts and reduced across ranks.

Sums and counts (never means of means) are all-reduced at logging time, so a
run on several ranks logs exactly what one rank would log on the same data.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from emoreg.regularization.plan import LayerPlan


class LayerMetrics:
    """Running sums for one layer's watched emotions since the last report."""

    def __init__(self, plan: LayerPlan) -> None:
        self.plan_emotions = plan.emotions
        self.penalty_emotions = [plan.emotions[i] for i in plan.penalty_index.tolist()]
        self.penalty_weight = plan.penalty_weight.tolist()
        self._sums: torch.Tensor | None = None  # layout: see _width

    def _width(self) -> int:
        e, p = len(self.plan_emotions), len(self.penalty_emotions)
        return 1 + 3 * e + p  # count, sum p, sum z, above p95 count, penalty sums

    def record(self, plan: LayerPlan, count: torch.Tensor, sums: torch.Tensor, above: torch.Tensor,
               penalty_sums: torch.Tensor | None) -> None:
        """Add one forward's token count, projection sums ``[E]``, counts above the 95th percentile ``[E]``
        and per-emotion penalty sums ``[P]`` (sums over the selected tokens)."""
        with torch.no_grad():
            count = count.to(torch.float64).reshape(1)
            sums = sums.to(torch.float64)
            # z is linear in p, so the sum of z-scores follows from the sum of projections
            sum_z = (sums - count * plan.mean.to(sums)) / plan.std.to(sums)
            parts = [count, sums, sum_z, above.to(torch.float64)]
            if self.penalty_emotions:
                parts.append(penalty_sums.to(torch.float64) if penalty_sums is not None
                             else sums.new_zeros(len(self.penalty_emotions)))
            row = torch.cat(parts)
            self._sums = row if self._sums is None else self._sums.to(row.device) + row

    def pending(self, device: torch.device) -> torch.Tensor:
        return self._sums.to(device) if self._sums is not None else torch.zeros(self._width(), dtype=torch.float64,
                                                                                  device=device)

    def reset(self) -> None:
        self._sums = None

    def summarize(self, totals: torch.Tensor, layer: int) -> dict[str, float]:
        """Turn reduced sums into logged values (nothing when no token was seen)."""
        e = len(self.plan_emotions)
        count = float(totals[0])
        if count == 0:
            return {}
        out = {}
        sum_p, sum_z, above = totals[1:1 + e], totals[1 + e:1 + 2 * e], totals[1 + 2 * e:1 + 3 * e]
        for i, emotion in enumerate(self.plan_emotions):
            out[f"emoreg/{emotion}/L{layer}/projection"] = float(sum_p[i]) / count
            out[f"emoreg/{emotion}/L{layer}/z"] = float(sum_z[i]) / count
            out[f"emoreg/{emotion}/L{layer}/frac_above_p95"] = float(above[i]) / count
        penalties = totals[1 + 3 * e:]
        for j, emotion in enumerate(self.penalty_emotions):
            out[f"emoreg/{emotion}/L{layer}/penalty"] = self.penalty_weight[j] * float(penalties[j]) / count
        out[f"emoreg/L{layer}/tokens"] = count
        return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks when a process group is running (no-op otherwise)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        backend = dist.get_backend()
        work = tensor.clone()
        if backend == "nccl" and work.device.type != "cuda":
            work = work.cuda()
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work.to(tensor.device)
    return tensor
