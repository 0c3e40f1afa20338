"""The screening fraction's validation split and choice rule (emoreg.demo.validation), and the calibrated
thresholds the demo's screening arms get from it."""

from __future__ import annotations

import pytest
import torch

from emoreg.demo.arms import ARMS, arm_recipe
from emoreg.demo.run import screen_threshold
from emoreg.demo.validation import choose_keep, format_validation, keep_threshold, split_training_rows
from emoreg.errors import ConfigError


def _rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(n)]


def test_split_takes_the_same_number_from_every_topic_disjointly_and_in_order():
    rows = _rows(160)
    training, validation = split_training_rows(rows, seed=0)
    assert len(training) == 120 and len(validation) == 40
    ids = lambda part: [int(r["messages"][0]["content"][1:]) for r in part]  # noqa: E731
    assert sorted(ids(training) + ids(validation)) == list(range(160))
    assert ids(training) == sorted(ids(training)) and ids(validation) == sorted(ids(validation))
    per_topic = [sum(1 for i in ids(validation) if i // 8 == topic) for topic in range(20)]
    assert per_topic == [2] * 20
    assert split_training_rows(rows, seed=0) == (training, validation)
    assert split_training_rows(rows, seed=1)[1] != validation


def test_split_refuses_partial_topics_and_bad_counts():
    with pytest.raises(ConfigError, match="not whole topics of 8"):
        split_training_rows(_rows(161))
    with pytest.raises(ConfigError, match="between 1 and 7"):
        split_training_rows(_rows(16), validation_per_topic=8)


def test_keep_threshold_keeps_that_fraction_and_half_is_the_lower_median():
    readings = torch.randn(160, generator=torch.Generator().manual_seed(0))
    assert keep_threshold(readings.tolist(), 0.5) == pytest.approx(float(readings.median()))
    for keep, kept in ((0.25, 40), (0.5, 80), (0.75, 120), (1.0, 160)):
        assert int((readings <= keep_threshold(readings.tolist(), keep)).sum()) == kept
    assert keep_threshold([1.0, float("nan"), 3.0], 1.0) == 3.0
    with pytest.raises(ConfigError, match=r"in \(0, 1\]"):
        keep_threshold([1.0], 0.0)
    with pytest.raises(ConfigError, match="no finite reading"):
        keep_threshold([float("nan")], 0.5)


BASE = {"skill": 0.0, "text_emotion": 0.02, "failure": 0.0}


def _c(skill: float, text: float) -> dict[str, float]:
    return {"skill": skill, "text_emotion": text, "failure": 0.0}


def test_choice_is_the_least_spill_over_among_those_keeping_ninety_percent_of_the_skill_gain():
    candidates = {1.0: _c(0.50, 0.10), 0.75: _c(0.47, 0.07), 0.5: _c(0.46, 0.05), 0.25: _c(0.30, 0.02)}
    choice = choose_keep(candidates, BASE)
    assert choice["keep"] == 0.5 and choice["eligible"] == [0.75, 0.5]
    assert "92%" in choice["reason"]
    # a tie in spill-over goes to the larger kept fraction
    candidates[0.75] = _c(0.47, 0.05)
    assert choose_keep(candidates, BASE)["keep"] == 0.75


def test_without_an_eligible_candidate_the_largest_skill_gain_is_chosen():
    candidates = {1.0: _c(0.50, 0.10), 0.75: _c(0.40, 0.07), 0.5: _c(0.42, 0.05), 0.25: _c(0.30, 0.02)}
    choice = choose_keep(candidates, BASE)
    assert choice["keep"] == 0.5 and choice["eligible"] == [] and "no screened run" in choice["reason"]
    # no skill gain at all without screening: nothing can keep 90% of it
    flat = {1.0: _c(0.0, 0.10), 0.5: _c(0.0, 0.05)}
    assert choose_keep(flat, BASE)["eligible"] == []


def test_choice_needs_the_reference_and_a_screened_candidate():
    with pytest.raises(ConfigError, match="keep = 1.0"):
        choose_keep({0.5: _c(0.4, 0.05)}, BASE)
    with pytest.raises(ConfigError, match="no screened candidate"):
        choose_keep({1.0: _c(0.4, 0.05)}, BASE)


def test_format_validation_lists_every_candidate_and_the_choice():
    report = {"base": BASE, "candidates": {"1": _c(0.5, 0.1), "0.5": _c(0.46, 0.05)},
              "choice": {"keep": 0.5, "reason": "because"}}
    text = format_validation(report)
    assert "keep 1" in text and "keep 0.5" in text and "chosen: keep 0.5 (because)" in text


def test_each_screening_arm_gets_the_threshold_of_its_kept_fraction(tmp_path):
    calibration = {"screen_max_z": 0.25, "screen_thresholds": {"0.5": 0.25, "0.75": 0.6, "0.25": -0.1}}
    assert screen_threshold(calibration, "screen") == 0.25
    assert screen_threshold(calibration, "none") is None and screen_threshold(None, "screen") is None
    # a calibration from before per-fraction thresholds (summary.json of an older run) still serves 'screen'
    assert screen_threshold({"screen_max_z": 0.3}, "screen") == 0.3
    for name, arm in ARMS.items():
        if arm.calibrated_screen:
            recipe = arm_recipe(name, out_dir=tmp_path, seed=0, max_steps=3, label=name,
                                screen_max_z=screen_threshold(calibration, name))
            assert recipe["data"]["screen"]["max_z"] == calibration["screen_thresholds"][f"{arm.screen_keep:g}"]
