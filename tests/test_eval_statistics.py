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
