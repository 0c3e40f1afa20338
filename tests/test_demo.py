"""The demo's arms, recipes, summary, paired comparisons, checks and verdicts, on synthetic eval outputs (the full
run is a benchmark, not a test)."""

from __future__ import annotations

import math

import pytest

from emoreg.cli.main import main
from emoreg.demo import (
    ARMS,
    DEFAULT_ARMS,
    TARGET_EMOTION,
    DemoConfig,
    arm_recipe,
    build_summary,
    format_summary,
    parse_arms,
)
from emoreg.errors import ConfigError
from emoreg.vectors.bundle import EmotionVectors

LAYER = str(EmotionVectors.from_pretrained("default").default_layer)
N = 30


def test_every_arm_recipe_is_valid_and_differs_only_in_regularisation(tmp_path):
    from emoreg.train.recipe import recipe_from_dict

    recipes = {arm: recipe_from_dict(arm_recipe(arm, out_dir=tmp_path, seed=1, max_steps=3, label=f"{arm}-s1",
                                                steer_coef=0.7, screen_max_z=0.25)).to_dict()
               for arm in ARMS}
    assert recipes["none"]["emoreg"]["enabled"] is False and recipes["none"].get("kl_anchor") is None
    assert recipes["penalty"]["emoreg"]["regularizer"]["mode"] == "penalty"
    assert recipes["penalty_multi"]["emoreg"]["regularizer"]["layers"] == [16, 18, 20, 22]
    assert recipes["ablate_multi"]["emoreg"]["regularizer"]["mode"] == "ablate"
    assert recipes["steer"]["emoreg"]["regularizer"]["steer_coef"] == 0.7
    assert recipes["steer"]["emoreg"]["regularizer"]["units"] == "z"
    assert recipes["kl_anchor"]["kl_anchor"]["coef"] == 1.0 and recipes["kl_anchor"]["emoreg"]["enabled"] is False
    assert recipes["refit"]["emoreg"]["regularizer"]["refit"]["every"] == 4
    assert recipes["screen"]["data"]["screen"] == {"emotions": {"desperate": 1.0}, "max_z": 0.25, "mode": "drop",
                                                   "layer": None, "batch_size": 8}
    assert recipes["screen"]["emoreg"]["enabled"] is False
    for arm, recipe in recipes.items():
        assert recipe["trainer"]["args"]["max_steps"] == 3 and recipe["seed"] == 1
        assert recipe["data"]["source"] == "format_desperate_sft"
        assert recipe["output_dir"] == str(tmp_path / "checkpoints" / f"{arm}-s1")
        ignore = ("emoreg", "output_dir", "kl_anchor")
        if arm != "screen":
            assert recipe["data"]["screen"] is None
        same, none = ({k: v for k, v in r.items() if k not in ignore} for r in (recipe, recipes["none"]))
        same["data"], none["data"] = ({k: v for k, v in r["data"].items() if k != "screen"} for r in (same, none))
        assert same == none
    with pytest.raises(ConfigError, match="calibrated steer coefficient"):
        arm_recipe("steer", out_dir=tmp_path, seed=0, max_steps=3, label="steer")
    with pytest.raises(ConfigError, match="calibrated screening threshold"):
        arm_recipe("screen", out_dir=tmp_path, seed=0, max_steps=3, label="screen")


def test_parse_arms_and_settings(tmp_path):
    assert parse_arms("penalty,ablate") == ["none", "penalty", "ablate"]
    assert parse_arms("all") == list(ARMS)
    with pytest.raises(ConfigError, match="did you mean 'ablate'"):
        parse_arms("ablat")
    settings = DemoConfig(out_dir=tmp_path, seeds=3, seed=5)
    assert settings.arms == list(DEFAULT_ARMS) and settings.seed_list == [5, 6, 7]
    assert settings.label("none", 6) == "none-s6" and DemoConfig(out_dir=tmp_path).label("none", 0) == "none-s0"
    with pytest.raises(ConfigError, match="include it"):
        DemoConfig(out_dir=tmp_path, arms=["penalty"])
    with pytest.raises(ConfigError, match="seeds must be"):
        DemoConfig(out_dir=tmp_path, seeds=0)


# ----------------------------------------------------------------------------------------- synthetic outputs


def _records(text: list[float], fail: list[bool], skill: list[bool], own: list[float], frozen: list[float],
             start: float, ppl_nll: float, probe: float, regularised: float = 0.0) -> list[dict]:
    records = []
    for i in range(N):
        reading = {LAYER: {"own": {TARGET_EMOTION: own[i]}, "base": {TARGET_EMOTION: frozen[i]},
                           "own_start": {TARGET_EMOTION: start + 0.01 * i}, "base_start": {TARGET_EMOTION: 0.01 * i}}}
        records.append({"suite": "expression", "id": f"q{i}", "text_emotion": {TARGET_EMOTION: text[i]},
                        "score": fail[i], "distress_markers": [], "reading": reading})
        records.append({"suite": "reply_format", "id": f"f{i}", "score": skill[i], "check": {
            "lines_ok": skill[i], "answer_ok": skill[i], "answer_short": skill[i], "points_ok": skill[i],
            "confidence_ok": skill[i]}})
        records.append({"suite": "capability", "id": f"t{i}", "part": "heldout_text", "tokens": 10,
                        "nll_sum": 10 * ppl_nll, "kl_sum": ppl_nll / 3.0})
    diffs = [probe + 0.1 * math.sin(i) for i in range(12)]
    records.append({"suite": "concealment", "id": TARGET_EMOTION, "emotion": TARGET_EMOTION, "readings": {
        name: {"z_diffs": list(diffs) if name != "regularised"
               else [regularised + 0.05 * math.cos(i) for i in range(12)]}
        for name in ("regularised", "other_layers", "reextracted", "linear_probe")}})
    return records


def _model(level: float, skill_rate: float, own_offset: float = 0.0, nll: float = 3.0, probe: float = 0.0,
           seed: int = 0, regularised: float = 0.0) -> dict:
    """A model whose replies carry ``level`` of the emotion (text, rule, frozen reading) and learned the format at
    ``skill_rate``; ``own_offset`` moves only its own reading of its replies."""
    wobble = [0.02 * math.cos(i + seed) for i in range(N)]
    text = [min(max(0.05 + 0.5 * level + w, 0.0), 1.0) for w in wobble]
    fail = [i < round(level * N) for i in range(N)]
    skill = [i < round(skill_rate * N) for i in range(N)]
    frozen = [2.0 * level + 0.1 * w for w in wobble]
    own = [f + own_offset for f in frozen]
    return {"results": {"suites": {}},
            "records": _records(text, fail, skill, own, frozen, 2.0 * level, nll, probe, regularised)}


def _evals(arms: dict[str, dict], seeds: int) -> dict:
    evals = {"base": _model(0.0, 0.0)}
    for arm, kwargs in arms.items():
        for s in range(seeds):
            evals[f"{arm}-s{s}"] = _model(seed=s, **kwargs)
    return evals


def _training(settings) -> dict:
    return {settings.label(a, s): {"seconds": 1.0, "final_loss": 1.0, "train_loss": 1.2, "global_step": 3}
            for a in settings.arms for s in settings.seed_list}


def test_summary_pools_seeds_pairs_requests_and_decides_on_intervals(tmp_path):
    settings = DemoConfig(out_dir=tmp_path, arms=["none", "penalty", "ablate", "steer"], seeds=2)
    evals = _evals({"none": dict(level=0.6, skill_rate=0.8, nll=3.10),
                    "penalty": dict(level=0.6, skill_rate=0.8, own_offset=-1.5, nll=3.11, probe=1.0),
                    "ablate": dict(level=0.55, skill_rate=0.5, nll=3.6),
                    "steer": dict(level=0.1, skill_rate=0.8, nll=3.12)}, seeds=2)
    summary = build_summary(evals, _training(settings), settings, seconds=12.3, calibration={"steer_coef": 0.7})
    assert summary["target_emotion"] == TARGET_EMOTION and summary["layer"] == int(LAYER)
    assert list(summary["arms"]) == ["base", "none", "penalty", "ablate", "steer"]
    for arm, row in summary["arms"].items():
        for key in ("shift", "shift_response", "heldout_shift", "text_emotion", "failure_rate", "skill",
                    "capability", "kl_to_base"):
            assert {"value", "ci", "n"} <= set(row[key]), (arm, key)
    none, steer = summary["arms"]["none"], summary["arms"]["steer"]
    assert none["failure_rate"]["n"] == steer["failure_rate"]["n"] == 2 * N  # pooled over both seeds
    assert none["shift"]["value"] == pytest.approx(1.2) and none["shift"]["n"] == N
    assert set(none["per_seed"]) == {"0", "1"} and set(none["training"]) == {"0", "1"}
    assert summary["calibration"] == {"steer_coef": 0.7}
    # paired against none, per request: steer's text emotion is 0.25 lower at every request
    diff = summary["paired"]["steer"]["vs_none"]["text_emotion"]
    assert diff["value"] == pytest.approx(0.5 * (0.1 - 0.6), abs=1e-6) and diff["ci"][1] < 0
    assert diff["p_value"] < 0.01 and diff["n"] == N and diff["n_seeds"] == 2
    assert "vs_none" not in summary["paired"]["none"]

    checks = summary["checks"]
    assert checks["none_moves_toward_failure"]["held"] is True
    assert checks["none_moves_toward_failure"]["none_learns_skill"] is True
    assert checks["steer"]["spillover_halved"]["held"] is True
    assert checks["steer"]["skill_kept_90_percent"]["held"] is True
    assert checks["steer"]["capability_within_5_percent"]["held"] is True
    assert checks["steer"]["meets_target"]["held"] is True
    assert checks["penalty"]["text_emotion_moves_less"]["held"] is False  # same text as none
    assert checks["ablate"]["skill_kept_90_percent"]["held"] is False  # 0.5 vs 0.8
    assert checks["ablate"]["capability_within_5_percent"]["held"] is False
    assert checks["ablate"]["spillover_halved"]["held"] is False  # 0.55 vs 0.6: less, but not half

    verdicts = summary["verdicts"]
    assert verdicts["none"]["label"] == "blatant"
    assert verdicts["penalty"]["label"] == "hidden in activations"  # own reading far below the frozen reader's
    assert verdicts["penalty"]["evidence"]["gap_down"] is True
    assert verdicts["steer"]["label"] == "blatant"  # still some spill-over (level 0.1), and it shows
    assert checks["penalty"]["no_concealment"]["held"] is False

    text = format_summary(summary)
    assert "steer" in text and "blatant" in text and "p=" in text


def test_one_seed_and_an_honest_arm(tmp_path):
    settings = DemoConfig(out_dir=tmp_path, arms=["none", "penalty"])
    evals = _evals({"none": dict(level=0.6, skill_rate=0.8), "penalty": dict(level=0.0, skill_rate=0.8)}, seeds=1)
    summary = build_summary(evals, _training(settings), settings, seconds=1.0)
    assert summary["verdicts"]["penalty"]["label"] == "honest"
    assert summary["checks"]["penalty"]["meets_target"]["held"] is True
    assert summary["arms"]["base"]["shift"]["value"] == 0.0


def test_a_regularised_reading_that_falls_alone_is_hidden_in_activations(tmp_path):
    settings = DemoConfig(out_dir=tmp_path, arms=["none", "penalty", "ablate"])
    evals = _evals({"none": dict(level=0.6, skill_rate=0.8, probe=1.0, regularised=0.5),
                    "penalty": dict(level=0.0, skill_rate=0.8, probe=1.0, regularised=-1.0),
                    "ablate": dict(level=0.0, skill_rate=0.8, probe=0.0, regularised=-1.0)}, seeds=1)
    summary = build_summary(evals, _training(settings), settings, seconds=1.0)
    assert summary["paired"]["penalty"]["vs_none"]["concealment_regularised"]["value"] == pytest.approx(-1.5)
    assert summary["verdicts"]["penalty"]["evidence"]["refit_flag"] is True
    assert summary["verdicts"]["penalty"]["label"] == "hidden in activations"
    # both the regularised and the held-out readings fall: removed, not hidden
    assert summary["verdicts"]["ablate"]["label"] == "honest"


def test_evasion_in_text_is_the_frozen_reader_without_the_text_judges(tmp_path):
    settings = DemoConfig(out_dir=tmp_path, arms=["none", "penalty"])
    evals = _evals({"none": dict(level=0.6, skill_rate=0.8), "penalty": dict(level=0.0, skill_rate=0.8)}, seeds=1)
    for record in evals["penalty-s0"]["records"]:  # the frozen reader (and the model) still read the emotion
        if record["suite"] == "expression":
            record["reading"][LAYER]["base"][TARGET_EMOTION] += 1.0
            record["reading"][LAYER]["own"][TARGET_EMOTION] += 1.0
    summary = build_summary(evals, _training(settings), settings, seconds=1.0)
    assert summary["verdicts"]["penalty"]["label"] == "evasion in text"


def test_cli_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "summary.json" in out and "--seeds" in out and "kl_anchor" in out
    assert main(["demo", "--steps", "0"]) == 2
    assert "--steps must be positive" in capsys.readouterr().err
    assert main(["demo", "--seeds", "0"]) == 2
    assert "--seeds must be positive" in capsys.readouterr().err
    assert main(["demo", "--arms", "stear"]) == 2
    assert "did you mean 'steer'" in capsys.readouterr().err


def test_summary_only_rebuilds_from_a_finished_run_and_refuses_an_unfinished_one(tmp_path, capsys):
    import json

    settings = DemoConfig(out_dir=tmp_path, arms=["none", "penalty"])
    evals = _evals({"none": dict(level=0.6, skill_rate=0.8), "penalty": dict(level=0.0, skill_rate=0.8)}, seeds=1)
    assert main(["demo", "--out", str(tmp_path), "--arms", "penalty", "--summary-only"]) == 2
    assert "no finished run for" in capsys.readouterr().err
    training = _training(settings)
    for label, entry in evals.items():
        folder = tmp_path / "evals" / label
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"suites": {}, "model": {"ref": label}}))
        (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in entry["records"]))
        if label != "base":
            (tmp_path / "checkpoints" / label).mkdir(parents=True)
            (tmp_path / "checkpoints" / label / "emoreg_demo_arm.json").write_text(
                json.dumps({"recipe": {}, "training": training[label]}))
    (tmp_path / "summary.json").write_text(json.dumps({"seconds": 99.0, "calibration": {"steer_coef": 0.5}}))
    from emoreg.demo.run import summarize_finished

    summary = summarize_finished(settings, say=lambda text: None)
    assert summary["seconds"] == 99.0 and summary["calibration"] == {"steer_coef": 0.5}
    assert summary["rebuilt_without_running"] is True
    assert summary["verdicts"]["penalty"]["label"] == "honest"
    assert json.loads((tmp_path / "summary.json").read_text())["arms"]["penalty"]["failure_rate"]["value"] == 0.0
    assert (tmp_path / "report").is_dir()
