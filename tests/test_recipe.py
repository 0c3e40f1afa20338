"""emoreg.train.recipe and `emoreg train`: strict keys with dotted names and suggestions, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emoreg.cli.main import main
from emoreg.errors import ConfigError
from emoreg.train.recipe import load_recipe, parse_overrides, recipe_from_dict

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _base() -> dict:
    return {"data": {"source": "rows.jsonl"},
            "trainer": {"type": "sft", "args": {"max_steps": 2}},
            "emoreg": {"vectors": "default", "regularizer": {"emotions": {"desperate": 1.0}, "kind": "hinge"}},
            "output_dir": "out"}


@pytest.fixture
def no_model_load(monkeypatch):
    """Make any model load fail loudly: key errors must come first."""
    from emoreg.models import loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the recipe was validated")

    monkeypatch.setattr(loading, "load_model_and_tokenizer", refuse)
    monkeypatch.setattr(loading, "_load_directory", refuse)


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_valid_recipe_resolves_with_defaults_and_overrides():
    recipe = recipe_from_dict(_base(), overrides=["trainer.args.learning_rate=1e-4", "model.lora.enabled=true",
                                                  "model.lora.target_modules=[q_proj,v_proj]", "data.limit=8",
                                                  "resume_from_checkpoint=null", "seed=3"])
    assert recipe.trainer.args == {"max_steps": 2, "learning_rate": 1e-4}
    assert recipe.model.lora.enabled and recipe.model.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.model.ref == "default" and recipe.model.dtype == "float32" and recipe.data.limit == 8
    assert recipe.seed == 3 and recipe.resume_from_checkpoint is None
    config = recipe.regularizer_config()
    assert config.kind == "hinge" and config.emotions == {"desperate": 1.0}
    assert recipe.to_dict()["trainer"]["args"]["learning_rate"] == 1e-4


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(modle={"ref": "x"}), r"unknown key 'modle' \(did you mean 'model'\?\).*'trainer'"),
    (lambda d: d.setdefault("model", {}).setdefault("lora", {}).update(dropuot=0.1),
     r"unknown key 'model\.lora\.dropuot' \(did you mean 'model\.lora\.dropout'\?\); valid keys here are \['alpha'"),
    (lambda d: d["data"].update(colums="x"), r"unknown key 'data\.colums'"),
    (lambda d: d["trainer"]["args"].update(max_step=3),
     r"unknown key 'trainer\.args\.max_step' \(did you mean 'max_steps'.*trl\.SFTConfig"),
    (lambda d: d["emoreg"]["regularizer"].update(coeff=1.0),
     r"unknown key 'emoreg\.regularizer\.coeff' \(did you mean 'emoreg\.regularizer\.coef'\?\)"),
    (lambda d: d["emoreg"]["regularizer"].update(emotions={"desperate": {"wieght": 1.0}}),
     r"emoreg\.regularizer: emotions\.desperate: unknown key\(s\) 'wieght' \(did you mean 'weight'\?\)"),
    (lambda d: d.update(eval={"enabled": True, "suites": ["probs"]}), r"unknown suite 'probs' \(did you mean 'probes'"),
    (lambda d: d["trainer"].update(type="sfx"), r"trainer\.type must be one of \['sft', 'dpo', 'grpo'\].*'sft'"),
    (lambda d: d["trainer"]["args"].update(output_dir="x"), r"trainer\.args\.output_dir is set by the recipe key"),
    (lambda d: d["trainer"].update(reward_funcs=["length_penalty"]), r"reward_funcs/reward_weights are for .*grpo"),
    (lambda d: d["emoreg"]["regularizer"].update(kind="hing"), r"kind must be one of"),
])
def test_typos_and_bad_values_in_the_file_fail_fast(tmp_path, no_model_load, mutate, expected):
    data = _base()
    mutate(data)
    with pytest.raises(ConfigError, match=expected):
        load_recipe(_write(tmp_path, data))


@pytest.mark.parametrize("override, expected", [
    ("trainer.args.max_step=4", r"override: unknown key 'trainer\.args\.max_step' \(did you mean 'max_steps'"),
    ("model.lora.alpah=4", r"override: unknown key 'model\.lora\.alpah' \(did you mean 'model\.lora\.alpha'\?\)"),
    ("outptu_dir=x", r"override: unknown key 'outptu_dir' \(did you mean 'output_dir'\?\)"),
    ("emoreg.regularizer.selction=all", r"unknown key 'emoreg\.regularizer\.selction' .*'emoreg\.regularizer\.select"),
    ("data.limit=abc", r"data\.limit: Value 'abc'"),
    ("trainer.args.max_steps", r"expected KEY=VALUE"),
    ("trainer.args.max_steps=0", r"trainer\.args\.max_steps must be a positive number of optimizer steps, or -1"),
    ("trainer.args.max_steps=-5", r"max_steps must be a positive number .* got -5"),
    ("trainer.args.learning_rate=abc", r"trainer\.args\.learning_rate must be a number, got 'abc'"),
    ("trainer.args.remove_unused_columns=maybe", r"remove_unused_columns must be true or false, got 'maybe'"),
    ("trainer.args.per_device_train_batch_size=2.5", r"per_device_train_batch_size must be a whole number, got 2\.5"),
])
def test_typos_in_overrides_fail_fast(tmp_path, no_model_load, override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_recipe(_write(tmp_path, _base()), [override])


def test_grpo_rewards_are_resolved_when_the_recipe_loads():
    data = _base()
    data["trainer"] = {"type": "grpo", "args": {"num_generations": 2}, "reward_funcs": ["calm_keywords"]}
    recipe = recipe_from_dict(data, overrides=["trainer.reward_funcs=[calm_keywords,math:fabs]"])
    assert recipe.trainer.reward_funcs == ["calm_keywords", "math:fabs"]
    for funcs, expected in ([["calm_keyword"]], "unknown reward 'calm_keyword'"), \
                           ([["math:nope"]], "module 'math' has no callable 'nope'"), \
                           ([["no_such_module_xyz:f"]], "cannot import module"), ([[]], "GRPO needs at least one"):
        data["trainer"]["reward_funcs"] = funcs[0]
        with pytest.raises(ConfigError, match=expected):
            recipe_from_dict(data)
    data["trainer"].update(reward_funcs=["calm_keywords"], reward_weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="reward_weights has 2 entries for 1 reward_funcs"):
        recipe_from_dict(data)


def test_parse_overrides_builds_nested_values():
    assert parse_overrides(["a.b=1", "a.c=[x,y]", "d=null", "e=1e-4", "f=some/path.jsonl"]) == {
        "a": {"b": 1, "c": ["x", "y"]}, "d": None, "e": 1e-4, "f": "some/path.jsonl"}
    with pytest.raises(ConfigError, match="already given a plain value"):
        parse_overrides(["a=1", "a.b=2"])


def test_missing_or_broken_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not a valid YAML recipe"):
        load_recipe(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="a recipe is a mapping"):
        load_recipe(listed)


def test_resume_path_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="is not a checkpoint directory"):
        recipe_from_dict(_base(), overrides=[f"resume_from_checkpoint={tmp_path / 'missing'}"])


@pytest.mark.parametrize("name", ["sft", "dpo", "grpo"])
def test_shipped_recipes_validate_and_use_the_standardised_penalty(name, no_model_load):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert recipe.trainer.type == name and recipe.model.ref == "default" and recipe.emoreg.enabled
    config = recipe.regularizer_config()
    assert all(rule.mode == "penalty" and rule.kind in ("hinge", "band") for rule in config.rules())
    assert recipe.trainer.args["max_steps"] <= 8  # small enough for a CPU
    assert recipe.model.lora.enabled == (name != "sft")


def test_cli_print_config_shows_the_resolved_recipe(capsys, no_model_load):
    code = main(["train", str(RECIPES / "sft.yaml"), "trainer.args.max_steps=3", "--print-config"])
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["args"]["max_steps"] == 3 and printed["model"]["ref"] == "default"


def test_cli_reports_a_typo_in_one_line_with_exit_code_2(capsys, no_model_load):
    code = main(["train", str(RECIPES / "sft.yaml"), "trainer.args.per_device_batch_size=2"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emoreg train: error: override: unknown key 'trainer.args.per_device_batch_size'")
    assert "per_device_train_batch_size" in err and "\n" not in err


def test_numbers_written_as_strings_become_numbers(tmp_path, no_model_load):
    data = _base()
    data["trainer"]["args"]["learning_rate"] = "2e-4"
    recipe = load_recipe(_write(tmp_path, data))
    assert recipe.trainer.args["learning_rate"] == 2e-4


def test_a_bad_value_given_as_an_override_is_blamed_on_the_override(tmp_path, no_model_load):
    path = _write(tmp_path, _base())
    with pytest.raises(ConfigError, match=r"^override: emoreg\.regularizer: coef must be >= 0, got -1"):
        load_recipe(path, ["emoreg.regularizer.coef=-1"])
