"""Writing a validation report: the JSON, the Markdown summary (a section per check present) and the plots."""

import json

import pytest

from emoreg.vectors.validation_report import write_validation_report

EMOTIONS = ["happy", "sad", "afraid"]


def _report(**checks) -> dict:
    report = {
        "default_layer": 1,
        "emotions": EMOTIONS,
        "sources": ["stories", "dialogues"],
        "logit_lens": {"happy": ["joy", "smile"], "sad": ["tears"], "afraid": ["fear"]},
        "valence_arousal": {"pc_variance_explained": [0.6, 0.25], "r_pc1_valence": 0.9, "r_pc2_arousal": -0.4,
                            "coordinates": {"happy": [1.0, 0.2], "sad": [-1.0, -0.3], "afraid": [-0.5, 0.9]}},
    }
    report.update(checks)
    return report


HELDOUT = {"method": "nearest direction", "stories": 30, "topics": 5, "chance": 1 / 3,
           "default_layer_accuracy": 0.8, "best_layer": 2, "best_layer_accuracy": 0.9,
           "accuracy_by_layer": {"0": 0.5, "1": 0.8, "2": 0.9},
           "per_emotion_recall_default_layer": {"happy": 1.0, "sad": 0.7, "afraid": 0.7},
           "emotions": EMOTIONS, "confusion_default_layer": [[10, 0, 0], [1, 7, 2], [0, 3, 7]]}
GOEMOTIONS = {"rows": 120, "file": "go.csv", "method": "z-scored argmax", "chance": 1 / 6,
              "default_layer_balanced_accuracy": 0.41, "balanced_accuracy_by_layer": {"0": 0.3, "1": 0.41, "2": 0.38},
              "balanced_accuracy_raw_by_layer": {"0": 0.28, "1": 0.35, "2": 0.33},
              "balanced_accuracy_by_source_and_layer": {"stories": {"0": 0.3, "1": 0.4, "2": 0.37}}}
VALENCE = {"rows": 50, "file": "ratings.csv", "reading": "PC1", "default_layer_spearman": 0.55, "best_layer": 2,
           "best_layer_spearman": 0.6}
REPLIES = {"replies": 12, "max_new_tokens": 48, "layer": 1, "method": "AUC per emotion", "mean_auc": 0.7,
           "auc": {"happy": 0.8, "sad": 0.6, "afraid": 0.7}}


def test_every_file_is_written(tmp_path):
    report = _report(heldout_topics=HELDOUT, goemotions=GOEMOTIONS, valence_ratings=VALENCE,
                     reply_agreement=REPLIES)
    written = write_validation_report(report, tmp_path / "new" / "dir")
    assert [p.name for p in written] == ["validation.json", "accuracy_by_layer.png", "confusion.png",
                                         "valence_arousal.png", "VALIDATION.md"]
    assert all(p.parent == tmp_path / "new" / "dir" for p in written)
    assert json.loads(written[0].read_text(encoding="utf-8")) == report
    assert written[0].read_text(encoding="utf-8") == json.dumps(report, indent=2) + "\n"
    for png in written[1:4]:
        assert png.read_bytes()[:4] == b"\x89PNG"
    markdown = written[-1].read_text(encoding="utf-8")
    for heading in ("# Emotion-vector validation", "## Held-out-topic story classification",
                    "## External check: GoEmotions", "## Valence: human ratings",
                    "## The model's own replies", "## Valence and arousal", "## Logit lens"):
        assert heading in markdown
    assert "Default layer: **1**. Emotions: 3. Sources: stories, dialogues." in markdown
    assert "- default layer 1: **80.0%**" in markdown
    assert "balanced accuracy **41.0%** (raw projections: 35.0%)" in markdown
    assert "| 1 | 41.0% | 40.0% |" in markdown
    assert "rho = **0.550**" in markdown and "Mean AUC **0.700**" in markdown
    assert "- **happy**: joy, smile" in markdown


@pytest.mark.filterwarnings("ignore:No artists with labels")  # no held-out or GoEmotions line to label
def test_a_report_without_optional_checks(tmp_path):
    written = write_validation_report(_report(), tmp_path)
    assert [p.name for p in written] == ["validation.json", "accuracy_by_layer.png", "valence_arousal.png",
                                         "VALIDATION.md"]
    markdown = (tmp_path / "VALIDATION.md").read_text(encoding="utf-8")
    assert "Held-out" not in markdown and "GoEmotions" not in markdown and "## Valence and arousal" in markdown
    assert "r(PC1, valence) = 0.90" in markdown and "r(PC1, arousal) = nan" in markdown

