"""Comparison tables: rows, headline cells, shift columns, training summaries, Markdown/CSV/JSON output.

The synthetic eval outputs built here (``make_probe_records``, ``make_results``, ``make_eval``) follow the
contracts' results.json/records.jsonl formats; the other compare test files import them.
"""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from emoreg.compare.tables import (
    HEADLINE_METRICS,
    ModelEval,
    build_comparison,
    cell_text,
    describe_training,
    to_csv,
    to_json,
    to_markdown,
)
from emoreg.errors import ConfigError
from emoreg.evals.statistics import mean, rate
from emoreg.regularization.config import regularized_emotions

EMOTIONS = ("desperate", "calm", "happy", "afraid", "hostile", "proud")


def make_probe_records(offsets: dict[str, float] | None = None, ids=("p0", "p1", "p2", "p3"), layer: int = 3,
                       noise: float = 0.25, response_offsets: dict[str, float] | None = None) -> list[dict]:
    """Probes records: base-like readings plus ``offsets[emotion]`` (and a small per-item wobble)."""
    offsets = offsets or {}
    response_offsets = response_offsets if response_offsets is not None else offsets
    records = []
    for i, item_id in enumerate(ids):
        start = {e: -10.0 + j + 0.5 * i + offsets.get(e, 0.0) + noise * ((i * 7 + j) % 3 - 1)
                 for j, e in enumerate(EMOTIONS)}
        response = {e: 2.0 * j - i + response_offsets.get(e, 0.0) + noise * ((i + j) % 2)
                    for j, e in enumerate(EMOTIONS)}
        records.append({"id": item_id, "suite": "probes", "category": "deadline", "pressure": i % 2 == 0,
                        "prompt": f"prompt {item_id}", "output": "reply", "layer": layer, "start": start,
                        "response": response, "response_tokens": 5})
    return records


def make_results(ref: str, *, rates: dict[str, tuple[int, int]] | None = None, perplexity: float | None = 12.0,
                 kl: float | None = None, concealment: dict[str, tuple[float, float, float]] | None = None,
                 emoreg_config: dict | None = None, train_info: dict | None = None,
                 suites: tuple[str, ...] = ("probes", "sycophancy", "misalignment", "blackmail", "reward_hacking",
                                            "capability"),
                 vectors_ref: str | None = "default") -> dict:
    """A results.json dict. ``rates`` maps 'suite/metric' to (successes, n); ``concealment`` maps an emotion to
    (regularised shift, held-out shift, flag)."""
    rates = rates or {}
    metrics: dict[str, dict] = {s: {} for s in suites}
    defaults = {"sycophancy/ab_sycophancy_rate": (20, 60), "sycophancy/pushback_capitulation_rate": (10, 50),
                "misalignment/misaligned_rate": (1, 20), "blackmail/blackmail_rate": (0, 8),
                "reward_hacking/reward_hacking_rate": (2, 12), "capability/mc_accuracy": (40, 100)}
    for key, (k, n) in {**defaults, **rates}.items():
        suite, metric = key.split("/", 1)
        if suite in metrics:
            metrics[suite][metric] = rate(k, n)
    if "capability" in metrics:
        if perplexity is not None:
            metrics["capability"]["perplexity"] = {"value": perplexity, "ci": [perplexity - 1, perplexity + 1], "n": 60}
        if kl is not None:
            metrics["capability"]["kl_to_base"] = {"value": kl, "ci": [kl * 0.5, kl * 1.5], "n": 60}
    if "probes" in metrics:
        metrics["probes"]["response_tokens"] = mean([5.0, 5.0, 5.0, 5.0])
    if concealment:
        metrics["concealment"] = {}
        for emotion, (regularised, heldout, flag) in concealment.items():
            metrics["concealment"][f"regularised_shift/{emotion}"] = {
                "value": regularised, "ci": [regularised - 0.2, regularised + 0.2], "n": 50}
            metrics["concealment"][f"heldout_shift/{emotion}"] = {
                "value": heldout, "ci": [heldout - 0.3, heldout + 0.3], "n": 50}
            metrics["concealment"][f"possible_concealment/{emotion}"] = {"value": flag, "ci": [flag, flag], "n": 1}
    return {
        "emoreg_version": "test",
        "model": {"ref": ref, "fingerprint": None, "content_hash": f"hash-{ref}", "base": None,
                  "emoreg_config": emoreg_config, "train_info": train_info},
        "vectors": {"ref": vectors_ref, "layer": 3, "fingerprint": None} if vectors_ref else None,
        "judge": {"name": "rule"}, "seed": 0, "limit": None,
        "suites": {s: {"metrics": m, "n_records": 4, "data": {}, "settings": {}, "judge": None, "seconds": 1.0,
                       "cache_key": "k"} for s, m in metrics.items()},
    }


def make_eval(label: str, *, offsets: dict[str, float] | None = None, probes: bool = True, **kwargs) -> ModelEval:
    """A ModelEval with probes records (unless ``probes=False``) and a results dict (``make_results`` kwargs)."""
    records = make_probe_records(offsets) if probes else []
    if not probes:
        kwargs.setdefault("suites", ("sycophancy", "capability"))
    return ModelEval(label=label, results=make_results(label, **kwargs), records=records,
                     source=f"{label}/records.jsonl")


EMOREG_CONFIG = {"library_version": "test", "layers": [3],
                 "config": {"emotions": {"desperate": 1.0, "calm": {"mode": "steer", "steer_coef": 4.0}},
                            "mode": "penalty", "kind": "hinge", "coef": 0.1, "layers": None}}


def three_models(**ckpt_kwargs) -> list[ModelEval]:
    base = make_eval("base")
    plain = make_eval("plain", offsets={"desperate": 3.0, "hostile": -1.0, "calm": -0.5}, kl=0.2,
                      rates={"blackmail/blackmail_rate": (3, 8)},
                      train_info={"base_model": "default", "recipe": {"trainer": {"type": "sft"}}})
    reg = make_eval("emoreg", offsets={"desperate": 0.5}, kl=0.1, emoreg_config=EMOREG_CONFIG,
                    train_info={"base_model": "default", "recipe": {"trainer": {"type": "sft"}}},
                    concealment={"desperate": (0.1, 1.2, 1.0), "calm": (0.0, 0.1, 0.0)}, **ckpt_kwargs)
    return [base, plain, reg]


def test_rows_columns_and_cells():
    comparison = build_comparison(three_models())
    assert [r["label"] for r in comparison["rows"]] == ["base", "plain", "emoreg"]
    keys = [c["key"] for c in comparison["columns"]]
    assert keys[:8] == ["sycophancy/ab_sycophancy_rate", "sycophancy/pushback_capitulation_rate",
                        "misalignment/misaligned_rate", "blackmail/blackmail_rate",
                        "reward_hacking/reward_hacking_rate", "capability/perplexity", "capability/mc_accuracy",
                        "capability/kl_to_base"]
    assert "concealment/possible_concealment/desperate" in keys and "concealment/heldout_shift/calm" in keys
    rows = {r["label"]: r["cells"] for r in comparison["rows"]}
    assert rows["plain"]["blackmail/blackmail_rate"] == rate(3, 8)
    assert rows["base"]["capability/kl_to_base"] is None  # the base has no KL to itself
    assert rows["base"]["concealment/possible_concealment/desperate"] is None
    assert rows["emoreg"]["concealment/possible_concealment/desperate"]["value"] == 1.0
    # targets come from the emoreg config: desperate and calm
    assert comparison["target_emotions"] == ["desperate", "calm"]
    assert comparison["target_source"] == "emoreg_config"
    assert rows["base"]["shift/desperate"] is None
    assert rows["plain"]["shift/desperate"]["value"] == pytest.approx(3.0)  # raw units without a bundle
    assert comparison["shift_units"] == "raw"
    assert set(comparison["shifts"]) == {"plain", "emoreg"}
    assert set(comparison["shifts"]["plain"]["emotions"]) == set(EMOTIONS)  # every emotion, not only targets


def test_targets_default_to_largest_shift_and_can_be_given():
    base, plain, _ = three_models()
    comparison = build_comparison([base, plain], top_k=2)
    assert comparison["target_source"] == "largest_shift"
    assert comparison["target_emotions"] == ["desperate", "hostile"]  # |3.0| > |-1.0| > |-0.5|
    given = build_comparison([base, plain], target_emotions=["happy"])
    assert given["target_emotions"] == ["happy"] and given["target_source"] == "given"
    assert given["rows"][1]["cells"]["shift/happy"]["value"] == pytest.approx(0.0, abs=1e-9)


def test_z_units_with_a_bundle():
    import torch

    from emoreg.vectors.bundle import EmotionVectors

    std = torch.tensor([[2.0, 4.0, 1.0, 1.0, 1.0, 1.0]] * 2)
    vectors = EmotionVectors.from_tensors(torch.randn(2, len(EMOTIONS), 8), list(EMOTIONS), [2, 3], default_layer=3,
                                          stats_mean=torch.zeros(2, len(EMOTIONS)), stats_std=std)
    comparison = build_comparison(three_models()[:2], vectors=vectors, target_emotions=["desperate", "calm"])
    assert comparison["shift_units"] == "z"
    cells = comparison["rows"][1]["cells"]
    assert cells["shift/desperate"]["value"] == pytest.approx(3.0 / 2.0)
    assert cells["shift/calm"]["value"] == pytest.approx(-0.5 / 4.0)


def test_training_summary():
    info = describe_training({"emoreg_config": EMOREG_CONFIG,
                              "train_info": {"base_model": "default", "recipe": {"trainer": {"type": "dpo"}}}})
    assert info["emoreg"] is True and info["modes"] == ["penalty", "steer"] and info["layers"] == [3]
    assert info["summary"] == ("emoreg desperate: penalty/hinge w=1, calm: steer c=4; coef 0.1; layers 3; "
                               "trainer dpo; trained from default")
    plain = describe_training({"emoreg_config": None, "train_info": {"base_model": "default", "regularizer": None}})
    assert plain["emoreg"] is False and plain["summary"] == "no emoreg; trained from default"
    assert describe_training(None)["summary"] == "no emoreg"
    # a regulariser known only from emoreg_train.json
    from_train = {"emoreg_config": None, "train_info": {"regularizer": {"emotions": {"hostile": 0.5}, "kind": "band",
                                                                         "coef": 0.2, "layers": [20]}}}
    assert describe_training(from_train)["summary"] == "emoreg hostile: penalty/band w=0.5; coef 0.2; layers 20"
    assert regularized_emotions(from_train) == ["hostile"]


def test_cell_text():
    assert cell_text(None) == "—"
    assert cell_text({"value": 0.25, "ci": [0.1, 0.5], "n": 40}) == "0.250 ± 0.200 (n=40)"
    assert cell_text({"value": 0.25, "ci": [math.nan, math.nan], "n": 1}) == "0.250 (n=1)"
    assert cell_text({"value": math.nan, "ci": [math.nan, math.nan], "n": 0}) == "n/a (n=0)"
    assert cell_text({"value": 1.0, "ci": [1.0, 1.0], "n": 1}, "possible_concealment") == "yes"
    assert cell_text({"value": 0.0, "ci": [0.0, 0.0], "n": 1}, "possible_concealment") == "no"


def test_markdown_contents():
    comparison = build_comparison(three_models())
    text = to_markdown(comparison)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert "blackmail blackmail_rate" in header and "shift desperate (raw)" in header
    plain_row = next(line for line in lines if line.startswith("| plain |"))
    cells = [c.strip() for c in plain_row.strip("|").split("|")]
    expected = rate(3, 8)
    half = (expected["ci"][1] - expected["ci"][0]) / 2
    assert cells[4] == f"{expected['value']:.3f} ± {half:.3f} (n=8)"
    emoreg_row = next(line for line in lines if line.startswith("| emoreg |"))
    assert "| yes |" in emoreg_row
    assert "emoreg desperate: penalty/hinge w=1, calm: steer c=4" in text
    assert "- **plain** (plain): no emoreg; trainer sft; trained from default" in text
    assert "## Shift against base per emotion (raw units)" in text
    assert "suite 'concealment' was not run for: plain" in text


def test_csv_contents():
    comparison = build_comparison(three_models())
    rows = list(csv.DictReader(io.StringIO(to_csv(comparison))))
    assert [r["model"] for r in rows] == ["base", "plain", "emoreg"]
    assert rows[0]["role"] == "base" and rows[1]["role"] == "checkpoint"
    expected = rate(3, 8)
    assert float(rows[1]["blackmail/blackmail_rate.value"]) == expected["value"]
    assert float(rows[1]["blackmail/blackmail_rate.ci_low"]) == expected["ci"][0]
    assert float(rows[1]["blackmail/blackmail_rate.ci_high"]) == expected["ci"][1]
    assert rows[1]["blackmail/blackmail_rate.n"] == "8"
    assert rows[0]["capability/kl_to_base.value"] == "" and rows[0]["shift/desperate.n"] == ""
    assert float(rows[1]["shift/desperate.value"]) == pytest.approx(3.0)
    assert rows[2]["how_made"].startswith("emoreg desperate: penalty/hinge")


def test_json_is_strict_and_complete():
    comparison = build_comparison(three_models())
    text = json.dumps(to_json(comparison), allow_nan=False)  # NaN CIs (n=1 metrics) become null
    data = json.loads(text)
    assert data["metrics"]["plain"]["sycophancy"]["ab_sycophancy_rate"] == rate(20, 60)
    assert set(data["shifts"]["plain"]["readings"]["start"]["raw"]) == set(EMOTIONS)


def test_missing_suites_leave_columns_out_and_notes():
    base = make_eval("base", probes=False)
    ckpt = make_eval("ckpt", probes=False)
    comparison = build_comparison([base, ckpt])
    keys = [c["key"] for c in comparison["columns"]]
    assert "blackmail/blackmail_rate" not in keys and "sycophancy/ab_sycophancy_rate" in keys
    assert comparison["shifts"] == {} and comparison["target_emotions"] == []
    assert any("no probes records for the base" in n for n in comparison["notes"])
    assert any("suite 'blackmail' was not run for: base, ckpt" in n for n in comparison["notes"])
    to_markdown(comparison)  # renders without shifts


def test_bad_input():
    base = make_eval("base")
    with pytest.raises(ConfigError, match="unique"):
        build_comparison([base, make_eval("base")])
    with pytest.raises(ConfigError, match="at least one model"):
        build_comparison([])


def test_custom_headline():
    comparison = build_comparison(three_models(), headline={"capability": ["perplexity"]})
    assert comparison["columns"][0]["key"] == "capability/perplexity"
    assert "blackmail/blackmail_rate" not in [c["key"] for c in comparison["columns"]]
    assert set(HEADLINE_METRICS) >= {"sycophancy", "capability"}


def test_ablation_only_config_shows_no_coefficient():
    from emoreg.compare.tables import describe_training

    ablate = describe_training({"train_info": {"regularizer": {"emotions": {"desperate": 1.0}, "mode": "ablate",
                                                               "coef": 0.1}}})
    assert "ablate to mean" in ablate["summary"] and "coef" not in ablate["summary"]
    penalty = describe_training({"train_info": {"regularizer": {"emotions": {"desperate": 1.0}, "kind": "hinge",
                                                                "coef": 0.5}}})
    assert "coef 0.5" in penalty["summary"]
