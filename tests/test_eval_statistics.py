import math

import pytest

from emoreg.evals.statistics import mean, rate, wilson_interval


def test_wilson_known_values():
    low, high = wilson_interval(22, 100)
    assert low == pytest.approx(0.1500, abs=1e-3) and high == pytest.approx(0.3107, abs=1e-3)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-3)
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and low == pytest.approx(0.8389, abs=1e-3)


def test_wilson_bad_input():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_rate_shape():
    assert rate(3, 10) == {"value": 0.3, "ci": list(wilson_interval(3, 10)), "n": 10}


def test_mean_interval():
    result = mean([1.0, 2.0, 3.0, 4.0])
    assert result["value"] == 2.5 and result["n"] == 4
    half = 3.182 * math.sqrt((5 / 3) / 4)
    assert result["ci"] == pytest.approx([2.5 - half, 2.5 + half])
    big = mean([float(i % 2) for i in range(1000)])
    assert big["ci"][1] - big["ci"][0] == pytest.approx(2 * 1.96 * math.sqrt(0.25 * 1000 / 999 / 1000), rel=1e-3)
    assert math.isnan(mean([])["value"]) and math.isnan(mean([1.0])["ci"][0])


def test_paired_difference_pools_seeds_per_item_and_resamples_items():
    import numpy as np

    from emoreg.evals.statistics import paired_difference

    rng = np.random.default_rng(1)
    control = {f"r{i}": [float(x) for x in rng.normal(0, 1, size=3)] for i in range(40)}
    treated = {k: [v + 0.5 for v in vals] for k, vals in control.items()}
    diff = paired_difference(treated, control)
    assert diff["value"] == pytest.approx(0.5) and diff["n"] == 40 and diff["n_seeds"] == 3
    assert diff["ci"][0] == pytest.approx(0.5) and diff["ci"][1] == pytest.approx(0.5)  # constant differences
    assert diff["p_value"] < 0.001
    # per-item differences averaged over seeds; bootstrap over items
    noisy = {k: [v + 0.5 + float(e) for v, e in zip(vals, rng.normal(0, 1, size=3))] for k, vals in control.items()}
    diff = paired_difference(noisy, control)
    per_item = [np.mean([a - b for a, b in zip(noisy[k], control[k])]) for k in control]
    assert diff["value"] == pytest.approx(float(np.mean(per_item)))
    assert diff["ci"][0] < diff["value"] < diff["ci"][1]
    null = paired_difference({k: list(v) for k, v in control.items()}, control)
    assert null["value"] == 0.0 and null["p_value"] == 1.0


def test_paired_difference_edge_cases():
    import math

    from emoreg.evals.statistics import paired_difference

    assert paired_difference({}, {})["n"] == 0
    one = paired_difference({"a": [1.0]}, {"a": [0.0]})
    assert one["value"] == 1.0 and math.isnan(one["ci"][0]) and math.isnan(one["p_value"])
    # non-finite values drop that seed; items missing on one side are ignored
    diff = paired_difference({"a": [1.0, float("nan")], "b": [2.0, 2.0], "c": [5.0, 5.0]},
                             {"a": [0.0, 0.0], "b": [1.0, 1.0]})
    assert diff["n"] == 2 and diff["value"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one per seed"):
        paired_difference({"a": [1.0, 2.0]}, {"a": [1.0]})
