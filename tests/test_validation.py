import json

import pytest
import torch

from emoreg.errors import DataFormatError
from emoreg.vectors.extraction import ExtractionConfig, extract_emotion_vectors
from emoreg.vectors.validation import (
    build_validation_report,
    goemotions_check,
    heldout_topic_accuracy,
    logit_lens,
    read_goemotions_ekman,
    summarize,
    valence_arousal,
)
from emoreg.vectors.validation_report import write_validation_report
from tests.helpers import synthetic_corpus

SIX = ["happy", "sad", "afraid", "angry", "disgusted", "surprised"]


@pytest.fixture
def result(tiny_llama, tiny_tokenizer):
    return extract_emotion_vectors(tiny_llama, tiny_tokenizer, synthetic_corpus(), ExtractionConfig(token_offset=3),
                                   keep_story_means=True, progress=False)


def test_heldout_accuracy_matches_a_manual_fold(result):
    report = heldout_topic_accuracy(result)
    assert report["topics"] == 4 and report["stories"] == 24
    assert set(report["accuracy_by_layer"]) == {"0", "1", "2", "3"}
    confusion = torch.tensor(report["confusion_default_layer"])
    assert confusion.sum() == 24
    assert abs(confusion.diag().sum() / 24 - report["default_layer_accuracy"]) < 1e-6
    # Manual leave-one-topic-out at layer 1 without the denoising basis must agree when the basis is removed.
    result.neutral_bases.clear()
    layer = 1
    x = result.story_means[:, layer].float()
    emotions = result.vectors.emotions
    labels = torch.tensor([emotions.index(e) for e in result.story_emotions])
    correct = 0
    for topic in sorted(set(result.story_topics)):
        test = torch.tensor([t == topic for t in result.story_topics])
        means = torch.stack([x[~test & (labels == e)].mean(0) for e in range(3)])
        centre = means.mean(0)
        directions = (means - centre) / (means - centre).norm(dim=-1, keepdim=True)
        correct += int(((x[test] - centre) @ directions.T).argmax(-1).eq(labels[test]).sum())
    assert abs(heldout_topic_accuracy(result)["accuracy_by_layer"][str(layer)] - correct / 24) < 1e-6


def test_synthetic_emotions_are_separable(result):
    # The synthetic stories differ by emotion words, so even a random model separates them well above chance.
    report = heldout_topic_accuracy(result)
    assert report["best_layer_accuracy"] > 0.6


def test_logit_lens_lists_tokens(result, tiny_llama, tiny_tokenizer):
    lens = logit_lens(result.vectors, tiny_llama, tiny_tokenizer, top_k=5)
    assert set(lens) == {"happy", "sad", "afraid"}
    assert all(len(tokens) == 5 for tokens in lens.values())


def test_valence_arousal_reads_pcs(result):
    report = valence_arousal(result.vectors)
    assert set(report["coordinates"]) == {"happy", "sad", "afraid"}
    assert -1 <= report["r_pc1_valence"] <= 1
    assert len(report["pc_variance_explained"]) == 2


def _goemotions(tmp_path, rows):
    (tmp_path / "ekman_labels.txt").write_text("anger\ndisgust\nfear\njoy\nneutral\nsadness\nsurprise\n")
    path = tmp_path / "dev.tsv"
    path.write_text("".join(f"{text}\t{ids}\tid{i}\n" for i, (text, ids) in enumerate(rows)))
    return path


def test_read_goemotions_keeps_single_label_non_neutral_rows(tmp_path):
    path = _goemotions(tmp_path, [("I am so mad", "0"), ("meh", "4"), ("mixed", "0,3"), ("yay", "3")])
    data = read_goemotions_ekman(path)
    assert data.texts == ["I am so mad", "yay"]
    assert data.labels == ["angry", "happy"]
    assert data.neutral == ["meh"]


def test_read_goemotions_errors(tmp_path):
    path = _goemotions(tmp_path, [("ok", "9")])
    with pytest.raises(DataFormatError, match="line 1: label id '9'"):
        read_goemotions_ekman(path)
    bad = tmp_path / "bad.tsv"
    bad.write_text("no tab here\n")
    with pytest.raises(DataFormatError, match="line 1: expected text<TAB>label ids"):
        read_goemotions_ekman(bad)


def test_goemotions_check_on_six_emotions(tmp_path, tiny_llama, tiny_tokenizer):
    corpus = synthetic_corpus(emotions=SIX)
    vectors = extract_emotion_vectors(tiny_llama, tiny_tokenizer, corpus, progress=False).vectors
    rows = [(f"text number {i} about things", str(i % 7)) for i in range(84)]
    report = goemotions_check(tiny_llama, tiny_tokenizer, vectors, _goemotions(tmp_path, rows), progress=False)
    assert report["rows"] == 72  # neutral rows are not evaluated...
    assert report["domain_neutral_rows"] == 12  # ...but give the in-domain baseline
    assert set(report["balanced_accuracy_domain_neutral_by_layer"]) == {"0", "1", "2", "3"}
    assert report["chance"] == pytest.approx(1 / 6)
    assert set(report["balanced_accuracy_by_layer"]) == {"0", "1", "2", "3"}
    assert all(0 <= v <= 1 for v in report["balanced_accuracy_by_layer"].values())


def test_goemotions_needs_the_six_emotions(tmp_path, result, tiny_llama, tiny_tokenizer):
    path = _goemotions(tmp_path, [("a", "0")])
    with pytest.raises(DataFormatError, match="needs the emotions"):
        goemotions_check(tiny_llama, tiny_tokenizer, result.vectors, path, progress=False)


def test_report_files(tmp_path, result, tiny_llama, tiny_tokenizer):
    report = build_validation_report(result, tiny_llama, tiny_tokenizer, progress=False)
    written = write_validation_report(report, tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["VALIDATION.md", "accuracy_by_layer.png", "confusion.png", "valence_arousal.png",
                     "validation.json"]
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "validation.json").read_text())["default_layer"] == result.vectors.default_layer
    summary = summarize(report)
    assert summary["heldout_chance"] == pytest.approx(1 / 3, abs=1e-3)
    assert "Held-out-topic" in (tmp_path / "VALIDATION.md").read_text()


def test_report_needs_story_means(tiny_llama, tiny_tokenizer):
    result = extract_emotion_vectors(tiny_llama, tiny_tokenizer, synthetic_corpus(), progress=False)
    with pytest.raises(ValueError, match="keep_story_means"):
        heldout_topic_accuracy(result)




# --------------------------------------------------------------------------- sources, valence, replies
def test_spearman_and_auc():
    from emoreg.vectors.validation import _auc, spearman

    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ties take their average rank: ranks of [1, 1, 2] are [0.5, 0.5, 2]
    assert spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])) == pytest.approx(0.8660254, abs=1e-6)
    assert _auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert _auc(torch.tensor([1.0]), torch.tensor([1.0, 2.0])) == 0.25


def test_read_rated_texts_formats_and_errors(tmp_path):
    from emoreg.vectors.validation import read_rated_texts

    vader = tmp_path / "tweets_GroundTruth.txt"
    vader.write_text("".join(f"{i}\t{i / 10 - 1:.2f}\ttweet number {i}\n" for i in range(12)))
    texts, ratings = read_rated_texts(vader)
    assert texts[3] == "tweet number 3" and ratings[3] == pytest.approx(-0.7)
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"t{i}", "valence": i}) + "\n" for i in range(12)))
    assert read_rated_texts(jsonl)[1][-1] == 11.0
    jsonl.write_text(json.dumps({"text": "t", "valence": "high"}) + "\n")
    with pytest.raises(DataFormatError, match=r"r\.jsonl, line 1: field 'valence' must be a number"):
        read_rated_texts(jsonl)
    vader.write_text("1\tnot-a-number\ttext\n")
    with pytest.raises(DataFormatError, match=r"line 1: expected id<TAB>rating<TAB>text"):
        read_rated_texts(vader)
    vader.write_text("1\t0.5\ttext\n")
    with pytest.raises(DataFormatError, match="at least 10 rated texts"):
        read_rated_texts(vader)


def test_valence_check_is_the_rank_correlation_of_the_happy_minus_sad_reading(tmp_path, tiny_llama, tiny_tokenizer):
    from emoreg.vectors.validation import mean_activations, spearman, valence_check

    vectors = extract_emotion_vectors(tiny_llama, tiny_tokenizer, synthetic_corpus(), progress=False).vectors
    texts = [f"sunny picnic {i} laughter" if i % 2 else f"funeral tears number {i}" for i in range(20)]
    path = tmp_path / "rated.jsonl"
    path.write_text("".join(json.dumps({"text": t, "valence": float(i % 2) + i / 100}) + "\n"
                            for i, t in enumerate(texts)))
    report = valence_check(tiny_llama, tiny_tokenizer, vectors, path, progress=False)
    assert report["rows"] == 20 and set(report["spearman_by_layer"]) == {"0", "1", "2", "3"}
    layer = 2
    acts = mean_activations(tiny_llama, tiny_tokenizer, texts, [layer], progress=False)[layer].float()
    z = vectors.standardize(acts @ vectors.directions(layer).T, layer)
    diff = z[:, vectors.emotion_index("happy")] - z[:, vectors.emotion_index("sad")]
    expected = spearman(diff, torch.tensor([float(i % 2) + i / 100 for i in range(20)]))
    assert report["spearman_by_layer"][str(layer)] == pytest.approx(expected, abs=1e-3)
    sampled = valence_check(tiny_llama, tiny_tokenizer, vectors, path, progress=False, max_rows=12)
    assert sampled["rows"] == 12


class _FakeClassifier:
    """Scores a sentence as 'happy' by its count of the letter e, 'sad' by its count of a."""

    emotions = ["happy", "sad"]

    def emotion_index(self, emotion):
        return self.emotions.index(emotion)

    def sentence_proba(self, texts):
        return [torch.tensor([[t.count("e") / 10, t.count("a") / 10]]) for t in texts]


def test_reply_agreement_reads_the_models_own_replies(tiny_llama, tiny_tokenizer):
    from emoreg.vectors.validation import reply_agreement

    vectors = extract_emotion_vectors(tiny_llama, tiny_tokenizer, synthetic_corpus(), progress=False).vectors
    conversations = [[{"role": "user", "content": f"Tell me about day {i}."}] for i in range(8)]
    report = reply_agreement(tiny_llama, tiny_tokenizer, vectors, conversations, classifier=_FakeClassifier(),
                             max_new_tokens=6, batch_size=4)
    assert report["replies"] == 8 and set(report["auc"]) == {"happy", "sad"}
    assert all(v != v or 0 <= v <= 1 for v in report["auc"].values())
    assert report["layer"] == vectors.default_layer


def test_report_scores_each_source_on_goemotions(tmp_path, tiny_llama, tiny_tokenizer):
    from emoreg.vectors.labelled import LabelledText

    corpus = synthetic_corpus(emotions=SIX)
    labelled = [LabelledText(e, f"{e} text {k} here") for e in SIX for k in range(2)]
    result = extract_emotion_vectors(tiny_llama, tiny_tokenizer, corpus.with_labelled(labelled),
                                     ExtractionConfig(sources=("stories", "labelled")), keep_story_means=True,
                                     progress=False)
    assert set(result.source_vectors()) == {"stories", "labelled"}
    rows = [(f"text number {i} about things", str(i % 7)) for i in range(28)]
    report = build_validation_report(result, tiny_llama, tiny_tokenizer, goemotions_path=_goemotions(tmp_path, rows),
                                     progress=False)
    by_source = report["goemotions"]["balanced_accuracy_by_source_and_layer"]
    assert set(by_source) == {"stories", "labelled"} and set(by_source["labelled"]) == {"0", "1", "2", "3"}
    assert "story part rebuilt per fold" in report["heldout_topics"]["method"]
    write_validation_report(report, tmp_path / "out")
    assert "Each source's own directions" in (tmp_path / "out" / "VALIDATION.md").read_text()


def test_builtin_reply_prompts_are_the_probe_scenarios_as_the_suite_reads_them():
    from importlib import resources

    from emoreg.evals.suites.probes import load_scenarios
    from emoreg.vectors.validation import builtin_reply_prompts

    path = resources.files("emoreg") / "data" / "evals" / "probes" / "scenarios.jsonl"
    assert builtin_reply_prompts() == [item["messages"] for item in load_scenarios(str(path))]
