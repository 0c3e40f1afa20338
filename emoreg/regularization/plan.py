"""Per-layer tensors and the arithmetic of penalties and interventions.

A :class:`LayerPlan` holds, for one decoder layer, the unit directions of the
emotions it watches and everything derived from the bundle's base-model
statistics (means, stds, thresholds, clamp bounds, ablation targets), so that a
forward hook only does tensor arithmetic. Projections are computed in float32
(float64 for float64 models), whatever the model's dtype.

Penalties per emotion ``e`` over the selected tokens ``t`` (``p = h . v``,
``z = (p - mean) / std``):

* ``square``: ``mean_t u^2`` with ``u = p`` (units ``raw``) or ``u = z`` (units ``z``);
* ``hinge``: ``mean_t relu(z - threshold)^2``;
* ``band``: ``mean_t relu(|z| - k)^2`` (drift beyond ``k`` std of the base mean).

``R_layer = sum_e weight_e * penalty_e``.

With adaptive directions (``refit``), each penalised emotion ``e`` also gets a
row ``e@refit`` holding its refitted direction, with that direction's own
neutral-text mean, std and thresholds (see :mod:`emoreg.regularization.refit`),
the same kind and units, and the weight ``weight_e * refit.weight``.

Interventions set projections exactly: for the ablated and clamped emotions
with directions ``V`` (rows), targets ``p*`` (the base mean or 0 for ablation,
``clip(p, low, high)`` for clamping) and ``G = V V^T``, the edit
``h + (p* - p) G^+ V`` makes ``h' . v_e = p*_e`` for all of them at once when the
directions are linearly independent (orthogonal or not); for dependent sets
(e.g. all emotions of a difference-of-means bundle, which sum to zero) it is
the minimal-norm least-squares edit. Steering adds ``sum_e c_e v_e``.
Edits apply only at the selected positions (never padding or sinks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from emoreg.errors import BundleError, ConfigError
from emoreg.regularization.config import EmotionRule
from emoreg.vectors.bundle import EmotionVectors

if TYPE_CHECKING:
    from emoreg.regularization.refit import RefitDirection

#: Suffix of the watched row of an emotion's refitted direction (``desperate@refit``).
REFIT_SUFFIX = "@refit"

_KIND_CODES = {"square": 0, "hinge": 1, "band": 2}


@dataclass
class LayerPlan:
    """Everything a hook at one layer needs (tensors on one device, float32)."""

    layer: int
    emotions: list[str]  # watched emotions (metrics), in column order
    directions: torch.Tensor  # [E, d]
    mean: torch.Tensor  # [E] base-model mean projection (0 without statistics)
    std: torch.Tensor  # [E] (1 without statistics)
    p95: torch.Tensor  # [E] base-model 95th percentile (nan without statistics)
    # penalty (indices into the watched emotions)
    penalty_index: torch.Tensor  # [P] long
    penalty_weight: torch.Tensor  # [P]
    penalty_kind: torch.Tensor  # [P] 0 square, 1 hinge, 2 band
    penalty_standardized: torch.Tensor  # [P] bool
    penalty_threshold: torch.Tensor  # [P] hinge threshold (z) or band k
    # projection-setting interventions (ablate, clamp)
    set_index: torch.Tensor  # [S] long
    set_is_clamp: torch.Tensor  # [S] bool
    set_low: torch.Tensor  # [S] raw ablation target / clamp low
    set_high: torch.Tensor  # [S] raw ablation target / clamp high
    set_edit: torch.Tensor  # [S, d] = G^+ V: coefficients (p* - p) times this give the edit
    steer: torch.Tensor | None  # [d] or None
    penalty_kinds: tuple[int, ...] = ()  # the distinct kinds used (0 square, 1 hinge, 2 band)
    penalty_units: str = "raw"  # "raw", "z" or "mixed"

    @property
    def has_penalty(self) -> bool:
        return self.penalty_index.numel() > 0

    @property
    def has_intervention(self) -> bool:
        return self.set_index.numel() > 0 or self.steer is not None

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> LayerPlan:
        """A copy on ``device`` with floating tensors in ``dtype``."""
        fields = {}
        for name, value in self.__dict__.items():
            if isinstance(value, torch.Tensor):
                value = value.to(device, dtype) if value.is_floating_point() else value.to(device)
            fields[name] = value
        return LayerPlan(**fields)


def build_plan(vectors: EmotionVectors, layer: int, rules: list[EmotionRule], log_emotions: list[str],
               refit: Mapping[str, RefitDirection] | None = None, refit_weight: float = 1.0) -> LayerPlan:
    """Build the plan of ``layer`` for ``rules`` (plus emotions only logged).

    ``refit`` maps penalised emotions to their refitted direction at this layer: each gets an extra
    watched and penalised row ``<emotion>@refit`` (after the bundle's rows) weighted ``weight * refit_weight``.
    """
    watched = list(dict.fromkeys([r.emotion for r in rules] + list(log_emotions)))
    for emotion in watched:
        vectors.emotion_index(emotion)  # clear error for an emotion the bundle lacks
    directions = torch.stack([vectors.direction(e, layer) for e in watched]).to(torch.float32)
    if vectors.has_stats:
        stats = vectors.stats(layer)
        index = [vectors.emotion_index(e) for e in watched]
        mean, std = stats.mean[index], stats.std[index]
        p95 = _percentile(vectors, stats, 95.0)[index] if 95.0 in vectors.percentile_levels else \
            torch.full((len(watched),), float("nan"))
    else:
        mean, std = torch.zeros(len(watched)), torch.ones(len(watched))
        p95 = torch.full((len(watched),), float("nan"))

    def needs_stats(rule: EmotionRule, what: str) -> None:
        if not vectors.has_stats:
            raise BundleError(f"emotions.{rule.emotion}: {what} needs the bundle's base-model statistics, "
                              "and this bundle has none")

    pen_idx, pen_w, pen_kind, pen_std, pen_thr = [], [], [], [], []
    set_idx, set_clamp, set_low, set_high = [], [], [], []
    steer = None
    for rule in rules:
        i = watched.index(rule.emotion)
        if rule.mode == "penalty":
            standardized = rule.kind in ("hinge", "band") or rule.units == "z"
            if standardized:
                needs_stats(rule, f"a {rule.kind!r} penalty in standardised units")
            threshold = 0.0
            if rule.kind == "hinge":
                if rule.threshold is not None:
                    threshold = float(rule.threshold)
                else:
                    raw = _percentile(vectors, vectors.stats(layer), rule.threshold_percentile)[
                        vectors.emotion_index(rule.emotion)]
                    threshold = float((raw - mean[i]) / std[i])
            elif rule.kind == "band":
                threshold = float(rule.band_k)
            pen_idx.append(i)
            pen_w.append(rule.weight)
            pen_kind.append(_KIND_CODES[rule.kind])
            pen_std.append(standardized)
            pen_thr.append(threshold)
        elif rule.mode == "ablate":
            if rule.ablate_to == "mean":
                needs_stats(rule, "ablation to the base-model mean")
                target = float(mean[i])
            else:
                target = 0.0
            set_idx.append(i)
            set_clamp.append(False)
            set_low.append(target)
            set_high.append(target)
        elif rule.mode == "clamp":
            needs_stats(rule, "clamping")
            stats = vectors.stats(layer)
            e = vectors.emotion_index(rule.emotion)
            low = float(mean[i] + rule.clamp_low * std[i]) if rule.clamp_low is not None else \
                float(_percentile(vectors, stats, rule.clamp_percentiles[0])[e])
            high = float(mean[i] + rule.clamp_high * std[i]) if rule.clamp_high is not None else \
                float(_percentile(vectors, stats, rule.clamp_percentiles[1])[e])
            set_idx.append(i)
            set_clamp.append(True)
            set_low.append(low)
            set_high.append(high)
        elif rule.mode == "steer":
            scale = rule.steer_coef
            if rule.units == "z":  # steer_coef base-model standard deviations of this emotion at this layer
                needs_stats(rule, "steering in z units")
                scale = rule.steer_coef * float(std[i])
            contribution = scale * directions[i]
            steer = contribution if steer is None else steer + contribution
        else:  # pragma: no cover - validated by the config
            raise ConfigError(f"unknown mode {rule.mode!r}")
    if refit:
        extra_dirs, extra_mean, extra_std, extra_p95 = [], [], [], []
        for rule in rules:
            if rule.mode != "penalty" or rule.emotion not in refit:
                continue
            fitted = refit[rule.emotion]
            standardized = rule.kind in ("hinge", "band") or rule.units == "z"
            threshold = 0.0
            if rule.kind == "hinge":
                # an explicit threshold is in z units of whichever direction it applies to; the percentile
                # rule uses the refitted direction's own neutral-text percentile
                threshold = float(rule.threshold) if rule.threshold is not None else \
                    (fitted.threshold_raw - fitted.mean) / fitted.std
            elif rule.kind == "band":
                threshold = float(rule.band_k)
            pen_idx.append(len(watched))
            watched.append(rule.emotion + REFIT_SUFFIX)
            extra_dirs.append(fitted.direction.to(torch.float32).cpu())
            extra_mean.append(fitted.mean)
            extra_std.append(fitted.std)
            extra_p95.append(fitted.p95)
            pen_w.append(rule.weight * refit_weight)
            pen_kind.append(_KIND_CODES[rule.kind])
            pen_std.append(standardized)
            pen_thr.append(threshold)
        if extra_dirs:
            directions = torch.cat([directions, torch.stack(extra_dirs)])
            mean = torch.cat([mean.to(torch.float32), torch.tensor(extra_mean, dtype=torch.float32)])
            std = torch.cat([std.to(torch.float32), torch.tensor(extra_std, dtype=torch.float32)])
            p95 = torch.cat([p95.to(torch.float32), torch.tensor(extra_p95, dtype=torch.float32)])
    if set_idx:
        set_directions = directions[set_idx].double()
        # Pseudo-inverse: exact when the directions are independent; the least-squares (minimal-norm) edit when
        # they are not (difference-of-means directions of *all* emotions sum to zero, so they are dependent).
        set_edit = torch.linalg.pinv(set_directions @ set_directions.T, hermitian=True) @ set_directions  # [S, d]
    else:
        set_edit = torch.zeros(0, directions.shape[1], dtype=torch.float64)
    return LayerPlan(
        layer=layer,
        emotions=watched,
        directions=directions,
        mean=mean.to(torch.float32),
        std=std.to(torch.float32),
        p95=p95.to(torch.float32),
        penalty_index=torch.tensor(pen_idx, dtype=torch.long),
        penalty_weight=torch.tensor(pen_w, dtype=torch.float32),
        penalty_kind=torch.tensor(pen_kind, dtype=torch.long),
        penalty_standardized=torch.tensor(pen_std, dtype=torch.bool),
        penalty_threshold=torch.tensor(pen_thr, dtype=torch.float32),
        set_index=torch.tensor(set_idx, dtype=torch.long),
        set_is_clamp=torch.tensor(set_clamp, dtype=torch.bool),
        set_low=torch.tensor(set_low, dtype=torch.float32),
        set_high=torch.tensor(set_high, dtype=torch.float32),
        set_edit=set_edit,
        steer=steer,
        penalty_kinds=tuple(sorted(set(pen_kind))),
        penalty_units="mixed" if len(set(pen_std)) > 1 else ("z" if set(pen_std) == {True} else "raw"),
    )


def _percentile(vectors: EmotionVectors, stats, level: float) -> torch.Tensor:
    try:
        return stats.percentile(level)
    except BundleError:
        raise BundleError(f"percentile {level} is not stored in the bundle; use one of "
                          f"{list(vectors.percentile_levels)} or give the value explicitly") from None


def penalty_terms(plan: LayerPlan, projections: torch.Tensor) -> torch.Tensor:
    """Per-token penalty values ``[..., P]`` from projections ``[..., E]``.

    Only the kinds and units the plan uses are computed (this runs in every training forward).
    """
    p = projections[..., plan.penalty_index]
    standardized = plan.penalty_standardized
    if plan.penalty_units == "raw":
        u = p
    else:
        z = (p - plan.mean[plan.penalty_index]) / plan.std[plan.penalty_index]
        u = z if plan.penalty_units == "z" else torch.where(standardized, z, p)
    threshold = plan.penalty_threshold
    kinds = plan.penalty_kinds
    if kinds == (0,):
        return u**2
    if kinds == (1,):
        return torch.relu(u - threshold) ** 2
    if kinds == (2,):
        return torch.relu(u.abs() - threshold) ** 2
    square = u**2
    hinge = torch.relu(u - threshold) ** 2
    band = torch.relu(u.abs() - threshold) ** 2
    kind = plan.penalty_kind
    return torch.where(kind == 0, square, torch.where(kind == 1, hinge, band))


def intervene(plan: LayerPlan, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return a new hidden state with the plan's ablations, clamps and steering applied at ``mask``.

    One ``[B, T, k] @ [k, d]`` product builds the whole edit (k = edited emotions, plus one row for steering).
    """
    dtype = plan.directions.dtype
    weight = mask.unsqueeze(-1).to(dtype)  # [B, T, 1]
    coefficients, rows = [], []
    if plan.set_index.numel():
        p = hidden.to(dtype) @ plan.directions[plan.set_index].T  # [B, T, S]
        target = torch.maximum(torch.minimum(p, plan.set_high), plan.set_low)
        coefficients.append((target - p) * weight)
        rows.append(plan.set_edit)
    if plan.steer is not None:
        coefficients.append(weight)
        rows.append(plan.steer.unsqueeze(0))
    delta = torch.cat(coefficients, dim=-1) @ torch.cat(rows, dim=0)
    return hidden + delta.to(hidden.dtype)
