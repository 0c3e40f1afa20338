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
