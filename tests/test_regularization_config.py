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


def test_save_pretrained_round_trip(tmp_path):
    import json

    from emoreg.models.provenance import CONFIG_FILE
    from emoreg.version import __version__

    config = RegularizerConfig(emotions={"desperate": 1.0, "calm": {"mode": "steer", "steer_coef": 4.0}},
                               kind="hinge", layers=[2, 3], clamp_percentiles=(10.0, 90.0), refit={"every": 5})
    path = config.save_pretrained(tmp_path / "ckpt")
    assert path == tmp_path / "ckpt" / CONFIG_FILE
    saved = json.loads(path.read_text())
    assert saved == {"library_version": __version__, "config": config.to_dict(), "layers": None, "vectors": None}
    assert RegularizerConfig.from_pretrained(tmp_path / "ckpt") == config


def test_save_pretrained_records_layers_and_bundle_like_training(tmp_path, tiny_llama):
    import json

    from tests.regularizer_helpers import make_bundle

    bundle = make_bundle(tiny_llama)
    config = RegularizerConfig(emotions={"desperate": 1.0})
    saved = json.loads(config.save_pretrained(tmp_path, layers=[2], vectors=bundle).read_text())
    assert list(saved) == ["library_version", "config", "layers", "vectors"] and saved["layers"] == [2]
    assert saved["vectors"] == {"emotions": bundle.emotions, "default_layer": bundle.default_layer,
                                "corpus_sha256": bundle.corpus_sha256,
                                "model_fingerprint": bundle.model_fingerprint.to_dict()}


def test_from_pretrained_errors(tmp_path):
    from emoreg.errors import ModelLoadError
    from emoreg.models.provenance import CONFIG_FILE

    with pytest.raises(ConfigError, match=f"no {CONFIG_FILE}"):
        RegularizerConfig.from_pretrained(tmp_path)
    (tmp_path / CONFIG_FILE).write_text('{"layers": [3]}')
    with pytest.raises(ConfigError, match="emoreg_config.json: missing field 'config'"):
        RegularizerConfig.from_pretrained(tmp_path)
    (tmp_path / CONFIG_FILE).write_text('{"config": {"emotions": {"calm": 1.0}, "coeff": 1}}')
    with pytest.raises(ConfigError, match=r"emoreg_config.json: config: unknown key\(s\) 'coeff'"):
        RegularizerConfig.from_pretrained(tmp_path)
    (tmp_path / CONFIG_FILE).write_text('{"config": ')
    with pytest.raises(ModelLoadError, match="emoreg_config.json: not valid JSON"):
        RegularizerConfig.from_pretrained(tmp_path)


def test_from_saved_prefers_emoreg_config_then_train_info():
    from emoreg.regularization.config import regularized_emotions

    in_config = {"config": {"emotions": {"desperate": 1.0, "calm": {"mode": "steer"}}, "kind": "hinge"}}
    in_train = {"regularizer": {"emotions": {"hostile": 0.5}, "coef": 0.2}}
    both = RegularizerConfig.from_saved({"emoreg_config": in_config, "train_info": in_train})
    assert both == RegularizerConfig(emotions={"desperate": 1.0, "calm": {"mode": "steer"}}, kind="hinge")
    assert RegularizerConfig.from_saved({"emoreg_config": None, "train_info": in_train}).coef == 0.2
    assert RegularizerConfig.from_saved({"emoreg_config": {"config": {"emotions": {}}}, "train_info": in_train}) \
        == RegularizerConfig(emotions={"hostile": 0.5}, coef=0.2)
    assert RegularizerConfig.from_saved({"train_info": {"regularizer": None}}) is None
    assert RegularizerConfig.from_saved(None) is None
    assert regularized_emotions({"emoreg_config": in_config}) == ["desperate", "calm"]
    assert regularized_emotions({"train_info": in_train}) == ["hostile"] and regularized_emotions({}) == []
    with pytest.raises(ConfigError, match="emoreg_train.json: regularizer: mode must be one of"):
        RegularizerConfig.from_saved({"train_info": {"regularizer": {"emotions": {"a": 1.0}, "mode": "x"}}})
