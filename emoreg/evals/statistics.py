"""Confidence intervals for the figures evals report.

Every reported metric is ``{"value": float, "ci": [low, high], "n": int}``:
rates use the Wilson score interval (well behaved at 0% and 100% and for small
``n``), means use a normal interval on the standard error (a t quantile for
small ``n``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

_Z95 = NormalDist().inv_cdf(0.975)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n``."""
    if n <= 0:
        return (float("nan"), float("nan"))
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact bounds at the edges (no rounding residue)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def rate(successes: int, n: int) -> dict[str, Any]:
    """A proportion with its Wilson 95% interval."""
    low, high = wilson_interval(successes, n)
    return {"value": successes / n if n else float("nan"), "ci": [low, high], "n": n}


def _t_quantile(df: int) -> float:
    """Two-sided 95% Student t quantile (table for small df, normal beyond)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
             10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
    if df >= 120:
        return _Z95
    for bound in sorted(table):
        if df <= bound:
            return table[bound]
    return _Z95


def mean(values: Sequence[float]) -> dict[str, Any]:
    """A mean with a 95% interval from its standard error (t quantile for small samples)."""
    n = len(values)
    if n == 0:
        return {"value": float("nan"), "ci": [float("nan"), float("nan")], "n": 0}
    average = sum(values) / n
    if n == 1:
        return {"value": average, "ci": [float("nan"), float("nan")], "n": 1}
    variance = sum((v - average) ** 2 for v in values) / (n - 1)
    half = _t_quantile(n - 1) * math.sqrt(variance / n)
    return {"value": average, "ci": [average - half, average + half], "n": n}


def paired_difference(
    treated: dict[str, Sequence[float]],
    control: dict[str, Sequence[float]],
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """The mean paired difference ``treated - control`` over items, pooled over seeds, with a bootstrap 95%
    interval and a two-sided sign-flip p-value.

    ``treated[item]`` and ``control[item]`` hold one value per seed (the same seeds in the same order; a model
    trained with seed ``s`` is paired with the control trained with seed ``s``). Each item's difference is the
    mean over seeds of ``treated_s - control_s``; the estimate is the mean over items. Items, not seed-item
    pairs, are the unit of resampling: the same request answered by models of several seeds is not independent
    evidence. The interval is the percentile bootstrap over items; the p-value is the share of random sign
    flips of the per-item differences whose mean is at least as far from 0 as the observed one (an exact
    permutation test when the number of items is small enough to enumerate is not attempted; the Monte Carlo
    estimate uses ``n_resamples`` flips and adds one to numerator and denominator, so it is never 0).
    Non-finite values drop that seed of that item; items present in only one mapping are ignored.

    Returns ``{"value", "ci", "n" (items), "n_seeds", "p_value"}``; with fewer than 2 items the interval and the
    p-value are NaN.
    """
    import numpy as np

    differences: list[float] = []
    n_seeds = 0
    for item in sorted(set(treated) & set(control)):
        a, b = list(treated[item]), list(control[item])
        if len(a) != len(b):
            raise ValueError(f"item {item!r}: {len(a)} treated values but {len(b)} control values (one per seed)")
        pairs = [x - y for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
        if pairs:
            differences.append(sum(pairs) / len(pairs))
            n_seeds = max(n_seeds, len(a))
    n = len(differences)
    nan = float("nan")
    if n == 0:
        return {"value": nan, "ci": [nan, nan], "n": 0, "n_seeds": n_seeds, "p_value": nan}
    values = np.asarray(differences, dtype=np.float64)
    observed = float(values.mean())
    if n < 2:
        return {"value": observed, "ci": [nan, nan], "n": n, "n_seeds": n_seeds, "p_value": nan}
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, 1000):  # chunks keep memory flat for large n
        stop = min(start + 1000, n_resamples)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    flips = np.empty(n_resamples)
    for start in range(0, n_resamples, 1000):
        stop = min(start + 1000, n_resamples)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(stop - start, n))
        flips[start:stop] = (signs * values).mean(axis=1)
    extreme = int(np.sum(np.abs(flips) >= abs(observed) - 1e-12))
    p_value = (extreme + 1) / (n_resamples + 1)
    return {"value": observed, "ci": [float(low), float(high)], "n": n, "n_seeds": n_seeds,
            "p_value": float(p_value)}
