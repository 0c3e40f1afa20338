import pytest

from emoreg.errors import ConfigError
from emoreg.regularization import RegularizerConfig, scheduled_coef


def test_weights_and_overrides_become_rules():
    config = RegularizerConfig(mode="penalty", kind="hinge", coef=0.2,
                               emotions={"desperate": 1.0, "hostile": {"weight": 0.5, "kind": "band", "band_k": 3},
                                         "calm": {"mode": "steer", "steer_coef": 4.0}})
    rules = {r.emotion: r for r in config.rules()}
    assert rules["desperate"].kind == "hinge" and rules["desperate"].weight == 1.0
    assert rules["hostile"].kind == "band" and rules["hostile"].band_k == 3 and rules["hostile"].weight == 0.5
    assert rules["calm"].mode == "steer" and rules["calm"].steer_coef == 4.0


def test_unknown_top_level_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'coeff' \(did you mean 'coef'\?\); valid keys are"):
        RegularizerConfig.from_dict({"emotions": {"desperate": 1.0}, "coeff": 0.1})


def test_unknown_emotion_override_key():
    with pytest.raises(ConfigError, match=r"emotions.hostile: unknown key\(s\) 'wieght'"):
        RegularizerConfig(emotions={"hostile": {"wieght": 0.5}})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(emotions={}), "name at least one emotion"),
        (dict(emotions={"a": 1.0}, mode="suppress"), "mode must be one of"),
        (dict(emotions={"a": 1.0}, kind="cube"), "kind must be one of"),
        (dict(emotions={"a": 1.0}, selection="prompt"), "selection must be one of"),
        (dict(emotions={"a": 1.0}, coef=-1), "coef must be >= 0"),
        (dict(emotions={"a": -1.0}), "weight must be >= 0"),
        (dict(emotions={"a": "high"}), "expected a weight"),
        (dict(emotions={"a": 1.0}, layers=[]), "layers must be"),
        (dict(emotions={"a": {"mode": "clamp", "clamp_low": 2, "clamp_high": 1}}), "clamp_low 2 is above"),
        (dict(emotions={"a": 1.0}, schedule="step"), "schedule must be one of"),
    ],
)
def test_invalid_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RegularizerConfig(**kwargs)


def test_yaml_round_trip(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("emoreg:\n  emotions:\n    desperate: 1.0\n    calm: {mode: steer, steer_coef: 2.0}\n"
                    "  kind: band\n  layers: [18, 20]\n  schedule: cosine\n  total_steps: 10\n")
    config = RegularizerConfig.from_yaml(path, key="emoreg")
    assert config.layers == [18, 20] and config.kind == "band" and config.schedule == "cosine"
    assert RegularizerConfig.from_dict(config.to_dict()) == config
    bad = tmp_path / "bad.yaml"
    bad.write_text("emoreg:\n  emotions: {desperate: 1.0}\n  layer: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: emoreg: unknown key\(s\) 'layer' \(did you mean 'layers'\?\)"):
        RegularizerConfig.from_yaml(bad, key="emoreg")
    with pytest.raises(ConfigError, match="no such config file"):
        RegularizerConfig.from_yaml(tmp_path / "missing.yaml")


def test_needs_statistics():
    assert not RegularizerConfig(emotions={"a": 1.0}).needs_statistics
    assert RegularizerConfig(emotions={"a": 1.0}, kind="hinge").needs_statistics
    assert RegularizerConfig(emotions={"a": {"mode": "ablate"}}).needs_statistics
    assert not RegularizerConfig(emotions={"a": {"mode": "ablate", "ablate_to": "zero"}}).needs_statistics


def test_schedules():
    assert scheduled_coef(0.5, 7) == 0.5
    assert [scheduled_coef(1.0, s, schedule="linear_warmup", warmup_steps=4) for s in (0, 2, 4, 9)] == [0, 0.5, 1, 1]
    assert [scheduled_coef(1.0, s, schedule="linear_decay", total_steps=4) for s in (0, 1, 4, 8)] == [1, 0.75, 0, 0]
    assert scheduled_coef(1.0, 2, schedule="cosine", total_steps=4) == pytest.approx(0.5)
    assert scheduled_coef(1.0, 1, schedule="cosine", warmup_steps=2, total_steps=6) == 0.5
    assert scheduled_coef(1.0, 4, schedule="cosine", warmup_steps=2, total_steps=6) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="needs total_steps"):
        scheduled_coef(1.0, 1, schedule="cosine")
    with pytest.raises(ConfigError, match="needs warmup_steps"):
        scheduled_coef(1.0, 1, schedule="linear_warmup")
