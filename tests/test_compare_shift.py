"""Fine-tuning shift along emotion vectors: arithmetic against hand computation, pairing by id, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from emoreg.compare.shift import compute_shift, neutral_std, probe_records
from emoreg.errors import ConfigError, DataFormatError
from emoreg.vectors.bundle import EmotionVectors


def record(item_id, start, response=None, layer=3, tokens=4, suite="probes"):
    return {"id": item_id, "suite": suite, "category": "c", "pressure": False, "prompt": "p", "output": "o",
            "layer": layer, "start": start, "response": response if response is not None else dict(start),
            "response_tokens": tokens}


def test_shift_matches_hand_computation():
    base = [record("a", {"x": 1.0, "y": 10.0}, {"x": 0.0, "y": 1.0}),
            record("b", {"x": 2.0, "y": 20.0}, {"x": 1.0, "y": 1.0}),
            record("c", {"x": 4.0, "y": 30.0}, {"x": 2.0, "y": 1.0})]
    ckpt = [record("c", {"x": 7.0, "y": 30.0}, {"x": 2.0, "y": 0.0}),  # order differs: pairing is by id
            record("a", {"x": 2.0, "y": 12.0}, {"x": 1.0, "y": 0.0}),
            record("b", {"x": 4.0, "y": 19.0}, {"x": 3.0, "y": 0.0})]
    report = compute_shift(base, ckpt, std={"x": 2.0, "y": 0.5})
    # x differences: a 1, b 2, c 3 -> mean 2, sample sd 1, t(2) = 4.303, half = 4.303 / sqrt(3)
    half = 4.303 * 1.0 / math.sqrt(3)
    raw_x = report.metric("x", "start", "raw")
    assert raw_x["value"] == pytest.approx(2.0) and raw_x["n"] == 3
    assert raw_x["ci"] == pytest.approx([2.0 - half, 2.0 + half])
    z_x = report.metric("x", "start", "z")
    assert z_x["value"] == pytest.approx(1.0) and z_x["ci"] == pytest.approx([(2.0 - half) / 2, (2.0 + half) / 2])
    # y differences: 2, -1, 0 -> mean 1/3
    assert report.metric("y", "start", "raw")["value"] == pytest.approx(1.0 / 3.0)
    assert report.metric("y", "start", "z")["value"] == pytest.approx((1.0 / 3.0) / 0.5)
    # response: x differences 1, 2, 0 -> mean 1; y differences all -1 -> zero-width interval
    assert report.metric("x", "response", "raw")["value"] == pytest.approx(1.0)
    assert report.metric("y", "response", "raw") == {"value": -1.0, "ci": [-1.0, -1.0], "n": 3}
    assert report.layer == 3 and report.emotions == ["x", "y"]
    assert report.only_in_base == [] and report.only_in_checkpoint == []
    assert report.to_dict()["std"] == {"x": 2.0, "y": 0.5}


def test_raw_only_without_std():
    base = [record("a", {"x": 1.0}), record("b", {"x": 2.0})]
    ckpt = [record("a", {"x": 3.0}), record("b", {"x": 3.0})]
    report = compute_shift(base, ckpt)
    assert report.metric("x", "start", "z") is None
    assert report.metric("x", "start", "raw")["value"] == pytest.approx(1.5)
    assert report.to_dict()["readings"]["start"]["z"] is None


def test_items_on_one_side_are_reported_not_dropped_silently():
    base = [record(i, {"x": float(k)}) for k, i in enumerate(["a", "b", "c", "d"])]
    ckpt = [record(i, {"x": float(k) + 1.0}) for k, i in enumerate(["a", "b", "e"])]
    report = compute_shift(base, ckpt)
    assert report.only_in_base == ["c", "d"]
    assert report.only_in_checkpoint == ["e"]
    assert report.readings["start"].n_paired == 2
    # a (0 -> 1) and b (1 -> 2): shift 1; e's value (2 + 1 = 3) does not enter
    assert report.metric("x", "start", "raw") == {"value": 1.0, "ci": [1.0, 1.0], "n": 2}


def test_empty_replies_are_left_out_of_the_response_reading_only():
    base = [record("a", {"x": 0.0}, {"x": 0.0}), record("b", {"x": 0.0}, {"x": 5.0}),
            record("c", {"x": 0.0}, {}, tokens=0)]
    ckpt = [record("a", {"x": 1.0}, {"x": 1.0}), record("b", {"x": 1.0}, {}, tokens=0),
            record("c", {"x": 1.0}, {"x": 9.0})]
    report = compute_shift(base, ckpt)
    assert report.readings["start"].n_paired == 3
    assert report.readings["response"].n_paired == 1
    assert report.readings["response"].no_response == ["b", "c"]
    assert report.metric("x", "response", "raw")["value"] == pytest.approx(1.0)


def test_other_suites_records_are_ignored():
    base = [record("a", {"x": 0.0}), {"id": "a", "suite": "blackmail", "score": 1.0}]
    ckpt = [record("a", {"x": 2.0}), {"id": "z", "suite": "capability"}]
    report = compute_shift(base, ckpt)
    assert report.only_in_checkpoint == [] and report.metric("x", "start", "raw")["value"] == 2.0
    assert list(probe_records(base)) == ["a"]


def test_bad_input_is_named():
    good = [record("a", {"x": 0.0})]
    with pytest.raises(DataFormatError, match="base.jsonl: no probes records"):
        compute_shift([], good, base_source="base.jsonl")
    with pytest.raises(DataFormatError, match="different layers"):
        compute_shift(good, [record("a", {"x": 0.0}, layer=5)])
    with pytest.raises(DataFormatError, match="duplicate probes id 'a'"):
        compute_shift(good + good, good)
    with pytest.raises(DataFormatError, match="ckpt.jsonl: probes record 'a': field 'start' has emotions"):
        compute_shift(good, [record("a", {"y": 0.0})], checkpoint_source="ckpt.jsonl")
    with pytest.raises(DataFormatError, match="'start.x' must be a finite number"):
        compute_shift(good, [record("a", {"x": float("nan")})])
    with pytest.raises(DataFormatError, match="missing field 'layer'"):
        compute_shift([{"id": "a", "suite": "probes", "start": {"x": 0.0}}], good)
    with pytest.raises(ConfigError, match="no neutral std for emotions"):
        compute_shift(good, good, std={"y": 1.0})
    with pytest.raises(ConfigError, match="not a positive number"):
        compute_shift(good, good, std={"x": 0.0})


def test_neutral_std_from_bundle():
    std = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    vectors = EmotionVectors.from_tensors(torch.randn(2, 2, 8), ["x", "y"], [2, 5], default_layer=5,
                                          stats_mean=torch.zeros(2, 2), stats_std=std)
    assert neutral_std(vectors, 5) == {"x": 3.0, "y": 4.0}
    with pytest.raises(ConfigError, match="layer 3"):
        neutral_std(vectors, 3)
    bare = EmotionVectors.from_tensors(torch.randn(1, 2, 8), ["x", "y"], [2])
    with pytest.raises(ConfigError, match="no base-model statistics"):
        neutral_std(bare, 2)
