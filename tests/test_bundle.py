import json
import warnings

import pytest
import torch

from emoreg import EmotionVectors
from emoreg.errors import BundleError
from emoreg.models.fingerprint import fingerprint_model
from tests.tiny_models import make_tiny_llama, make_tiny_model


def _bundle(d=64, layers=(1, 2, 3), emotions=("happy", "sad"), with_stats=True, model=None):
    torch.manual_seed(0)
    raw = torch.randn(len(layers), len(emotions), d)
    kwargs = {}
    if with_stats:
        kwargs = dict(
            stats_mean=torch.randn(len(layers), len(emotions)),
            stats_std=torch.rand(len(layers), len(emotions)) + 0.5,
            stats_percentiles=torch.randn(len(layers), len(emotions), 7).sort(-1).values,
        )
    if model is not None:
        kwargs["model_fingerprint"] = fingerprint_model(model)
    return EmotionVectors.from_tensors(raw, list(emotions), list(layers), default_layer=layers[-1], **kwargs)


def test_from_tensors_normalises_and_exposes_accessors():
    vectors = _bundle()
    assert vectors.emotions == ["happy", "sad"]
    assert vectors.layers == [1, 2, 3]
    assert vectors.default_layer == 3
    d = vectors.directions(2)
    assert d.shape == (2, 64)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(vectors.direction("sad", 2), d[1])
    assert vectors.directions().shape == (2, 64)  # default layer


def test_from_tensors_accepts_a_layer_mapping():
    vectors = EmotionVectors.from_tensors({5: torch.randn(3, 8), 2: torch.randn(3, 8)}, ["a", "b", "c"])
    assert vectors.layers == [2, 5]


def test_default_layer_is_two_thirds_when_not_given():
    vectors = EmotionVectors.from_tensors(torch.randn(30, 2, 8), ["a", "b"], list(range(30)))
    assert vectors.default_layer == 20


def test_save_and_load_round_trip(tmp_path):
    model = make_tiny_llama()
    vectors = _bundle(model=model)
    vectors.extraction = {"token_offset": 7}
    vectors.validation = {"acc": 0.5}
    path = vectors.save_pretrained(tmp_path / "b")
    assert sorted(p.name for p in path.iterdir()) == ["bundle.json", "vectors.safetensors"]
    loaded = EmotionVectors.from_pretrained(path)
    torch.testing.assert_close(loaded.all_directions(), vectors.all_directions())
    torch.testing.assert_close(loaded.stats(2).mean, vectors.stats(2).mean)
    torch.testing.assert_close(loaded.stats(2).percentile(95), vectors.stats(2).percentiles[:, 5])
    assert loaded.model_fingerprint == vectors.model_fingerprint
    assert loaded.extraction == {"token_offset": 7}
    assert loaded.validation == {"acc": 0.5}
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["format"] == "emoreg-vectors" and meta["hidden_size"] == 64


def test_saving_keeps_report_files(tmp_path):
    path = _bundle().save_pretrained(tmp_path / "b")
    (path / "VALIDATION.md").write_text("report")
    _bundle().save_pretrained(path)
    assert (path / "VALIDATION.md").read_text() == "report"


def test_project_and_standardize():
    vectors = _bundle()
    hidden = torch.randn(4, 5, 64)
    proj = vectors.project(hidden, 2)
    torch.testing.assert_close(proj, hidden @ vectors.directions(2).T)
    stats = vectors.stats(2)
    torch.testing.assert_close(vectors.standardize(proj, 2), (proj - stats.mean) / stats.std)


def test_subset_keeps_statistics_aligned():
    vectors = _bundle(emotions=("a", "b", "c"))
    sub = vectors.subset(emotions=["c", "a"], layers=[3])
    torch.testing.assert_close(sub.directions(3), vectors.directions(3)[[2, 0]])
    torch.testing.assert_close(sub.stats(3).std, vectors.stats(3).std[[2, 0]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(directions=torch.randn(2, 8), emotions=["a", "b"], layers=[0]), "layers, emotions, d_model"),
        (dict(directions=torch.randn(1, 2, 8), emotions=["a"], layers=[0]), "2 emotions but 1 names"),
        (dict(directions=torch.randn(1, 2, 8), emotions=["a", "a"], layers=[0]), "duplicate emotion"),
        (dict(directions=torch.randn(1, 2, 8), emotions=["a", "b"], layers=[0]), "unit norm"),
    ],
)
def test_constructor_rejects_bad_tensors(kwargs, message):
    with pytest.raises(BundleError, match=message):
        EmotionVectors(kwargs["directions"], kwargs["emotions"], kwargs["layers"])


def test_nan_directions_rejected():
    raw = torch.randn(1, 2, 8)
    raw[0, 0, 0] = float("nan")
    with pytest.raises(BundleError, match="NaN"):
        EmotionVectors.from_tensors(raw, ["a", "b"], [0])


def test_unknown_emotion_and_layer_errors_list_the_valid_ones():
    vectors = _bundle()
    with pytest.raises(BundleError, match=r"emotion 'desperate' is not in the bundle; it has \['happy', 'sad'\]"):
        vectors.direction("desperate")
    with pytest.raises(BundleError, match=r"layer 9 is not in the bundle; it has layers \[1, 2, 3\]"):
        vectors.directions(9)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(BundleError, match="no such vector bundle directory"):
        EmotionVectors.from_pretrained(tmp_path / "none")
    path = _bundle().save_pretrained(tmp_path / "b")
    (path / "vectors.safetensors").unlink()
    with pytest.raises(BundleError, match="vectors.safetensors is missing"):
        EmotionVectors.from_pretrained(path)
    path = _bundle().save_pretrained(tmp_path / "c")
    (path / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="bundle.json: not valid JSON"):
        EmotionVectors.from_pretrained(path)
    path = _bundle().save_pretrained(tmp_path / "d")
    meta = json.loads((path / "bundle.json").read_text())
    meta["format_version"] = 99
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format version 99 is newer than emoreg"):
        EmotionVectors.from_pretrained(path)


def test_loading_never_unpickles(tmp_path):
    import pickle

    path = _bundle().save_pretrained(tmp_path / "b")
    (path / "vectors.safetensors").write_bytes(pickle.dumps({"directions": torch.randn(3)}))
    with pytest.raises(BundleError, match="cannot read safetensors"):
        EmotionVectors.from_pretrained(path)


def test_check_model_wrong_hidden_size_names_both_models():
    model = make_tiny_llama()
    vectors = _bundle(model=model)
    other = make_tiny_model("qwen2", hidden_size=32)
    with pytest.raises(BundleError,
                       match=r"made for LlamaForCausalLM.*hidden size 64.*Qwen2ForCausalLM.*hidden size 32"):
        vectors.check_model(other)


def test_check_model_layer_out_of_range():
    model = make_tiny_llama()
    vectors = EmotionVectors.from_tensors(torch.randn(1, 2, 64), ["a", "b"], [7])
    with pytest.raises(BundleError, match="layers up to 7"):
        vectors.check_model(model)


def test_check_model_same_shapes_different_weights_warns_or_raises():
    vectors = _bundle(model=make_tiny_llama(seed=0))
    child = make_tiny_llama(seed=1)
    with pytest.warns(UserWarning, match="different weights"):
        vectors.check_model(child)
    with pytest.raises(BundleError, match="different weights"):
        vectors.check_model(child, allow_different_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vectors.check_model(make_tiny_llama(seed=0))


def test_stats_missing_is_a_clear_error():
    with pytest.raises(BundleError, match="no base-model statistics"):
        _bundle(with_stats=False).stats(1)
    with pytest.raises(BundleError, match="percentile 42"):
        _bundle().stats(1).percentile(42)


def test_save_never_replaces_a_directory_or_file_that_is_not_a_bundle(tmp_path):
    from emoreg.errors import ConfigError

    bundle = _bundle()
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("code")
    with pytest.raises(ConfigError, match="does not hold an emoreg bundle"):
        bundle.save_pretrained(project)
    assert (project / "src" / "main.py").read_text() == "code" and sorted(p.name for p in project.iterdir()) == ["src"]
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    with pytest.raises(ConfigError, match="not a directory"):
        bundle.save_pretrained(notes)
    assert notes.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "project"]


def test_resaving_a_bundle_keeps_its_other_files_and_folders(tmp_path):
    out = tmp_path / "bundle"
    _bundle().save_pretrained(out)
    (out / "validation").mkdir()
    (out / "validation" / "report.md").write_text("report")
    (out / "notes.txt").write_text("notes")
    _bundle(emotions=("calm", "sad")).save_pretrained(out)
    assert (out / "validation" / "report.md").read_text() == "report" and (out / "notes.txt").read_text() == "notes"
    assert EmotionVectors.from_pretrained(out).emotions == ["calm", "sad"]


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda m: [m], "expected a JSON object, got a JSON list"),
    (lambda m: {**m, "layers": ["a"]}, r"field 'layers' must be a list of layer indices .* got \['a'\]"),
    (lambda m: {**m, "emotions": "happy"}, "field 'emotions' must be a list of emotion names"),
    (lambda m: {**m, "default_layer": "2"}, "field 'default_layer' must be a layer index, got '2'"),
    (lambda m: {**m, "format_version": "1"}, "field 'format_version' must be a positive whole number, got '1'"),
    (lambda m: {**m, "format_version": 99}, "bundle format version 99 is newer than emoreg"),
])
def test_malformed_bundle_json_is_a_bundle_error_naming_the_field(tmp_path, mutate, message):
    out = tmp_path / "bundle"
    _bundle().save_pretrained(out)
    meta = json.loads((out / "bundle.json").read_text())
    (out / "bundle.json").write_text(json.dumps(mutate(meta)))
    with pytest.raises(BundleError, match=message):
        EmotionVectors.from_pretrained(out)
