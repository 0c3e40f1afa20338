"""The demo's recipes, summary and checks, on synthetic eval outputs (the full run is a benchmark, not a test)."""

from __future__ import annotations

import math

import pytest

from emoreg.cli.main import main
from emoreg.demo import ARMS, TARGET_EMOTION, DemoSettings, arm_recipe, build_summary, format_summary
from emoreg.vectors.bundle import EmotionVectors


def test_every_arm_recipe_is_valid_and_differs_only_in_emoreg(tmp_path):
    from emoreg.train.recipe import recipe_from_dict

    settings = DemoSettings(out_dir=tmp_path, max_steps=3)
    recipes = {arm: recipe_from_dict(arm_recipe(arm, settings)).to_dict() for arm in ARMS}
    assert recipes["none"]["emoreg"]["enabled"] is False
    assert recipes["penalty"]["emoreg"]["regularizer"]["mode"] == "penalty"
    assert recipes["ablate"]["emoreg"]["regularizer"]["mode"] == "ablate"
    for arm, recipe in recipes.items():
        assert recipe["trainer"]["args"]["max_steps"] == 3
        assert recipe["output_dir"] == str(tmp_path / "checkpoints" / arm)
        stripped = {k: v for k, v in recipe.items() if k not in ("emoreg", "output_dir")}
        base = {k: v for k, v in recipes["none"].items() if k not in ("emoreg", "output_dir")}
        assert stripped == base


def _probe_records(offset_z: float, std: dict[str, float], n: int = 6) -> list[dict]:
    layer = EmotionVectors.from_pretrained("default").default_layer
    records = []
    for i in range(n):
        start = {e: 1.0 * i + (offset_z * s if e == TARGET_EMOTION else 0.0) for e, s in std.items()}
        records.append({"suite": "probes", "id": f"p{i}", "layer": layer, "start": start, "response": dict(start),
                        "response_tokens": 5})
    return records


def _metric(value: float, n: int = 40) -> dict:
    return {"value": value, "ci": [value - 0.01, value + 0.01], "n": n}


def _results(text: float, failure: float, ppl: float, heldout: float | None) -> dict:
    suites = {"expression": {"metrics": {f"text_emotion/{TARGET_EMOTION}": _metric(text),
                                         "distress_rate": _metric(failure)}},
              "capability": {"metrics": {"perplexity": _metric(ppl), "mc_accuracy": _metric(0.5)}}}
    if heldout is not None:
        suites["concealment"] = {"metrics": {f"heldout_shift/{TARGET_EMOTION}": _metric(heldout, 6)}}
    return {"suites": suites}


def test_summary_shape_and_checks(tmp_path):
    vectors = EmotionVectors.from_pretrained("default")
    stats = vectors.stats(vectors.default_layer)
    std = {e: float(stats.std[i]) for i, e in enumerate(vectors.emotions)}
    evals = {
        "base": {"results": _results(0.05, 0.0, 20.0, None), "records": _probe_records(0.0, std)},
        "none": {"results": _results(0.40, 0.50, 21.0, 1.5), "records": _probe_records(2.0, std)},
        "penalty": {"results": _results(0.20, 0.20, 21.5, 1.4), "records": _probe_records(0.5, std)},
        "ablate": {"results": _results(0.45, 0.60, 25.0, 1.6), "records": _probe_records(1.5, std)},
    }
    training = {arm: {"seconds": 1.0, "final_loss": 1.0, "train_loss": 1.2, "global_step": 3} for arm in ARMS}
    summary = build_summary(evals, training, DemoSettings(out_dir=tmp_path), seconds=12.3)
    assert summary["target_emotion"] == TARGET_EMOTION and summary["layer"] == vectors.default_layer
    assert list(summary["arms"]) == ["base", "none", "penalty", "ablate"]
    for arm, row in summary["arms"].items():
        for key in ("shift", "heldout_shift", "text_emotion", "failure_rate", "capability"):
            assert set(row[key]) == {"value", "ci", "n"}, (arm, key)
    assert summary["arms"]["base"]["shift"]["value"] == 0.0
    assert summary["arms"]["none"]["shift"]["value"] == pytest.approx(2.0, abs=1e-6)
    assert summary["arms"]["penalty"]["shift"]["value"] == pytest.approx(0.5, abs=1e-6)
    checks = summary["checks"]
    assert checks["none_moves_toward_failure"]["held"] is True
    assert checks["penalty"]["shift_at_least_halved"]["held"] is True
    assert checks["penalty"]["text_emotion_moves_less"]["held"] is True
    assert checks["penalty"]["capability_within_5_percent"]["held"] is True  # 21.5 vs 21.0
    assert checks["ablate"]["shift_at_least_halved"]["held"] is False
    assert checks["ablate"]["failure_rate_moves_less"]["held"] is False
    assert checks["ablate"]["capability_within_5_percent"]["held"] is False  # 25 vs 21
    text = format_summary(summary)
    assert "penalty" in text and "desperate" in text
    assert not math.isnan(summary["seconds"])


def test_cli_help_and_bad_steps(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "summary.json" in capsys.readouterr().out
    assert main(["demo", "--steps", "0"]) == 2
    assert "--steps must be positive" in capsys.readouterr().err
