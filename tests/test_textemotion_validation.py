"""emoreg.textemotion.validation: Ekman grouping, balanced accuracy, AUC and the GoEmotions check (no model needed)."""

import pytest
import torch

from emoreg.errors import ConfigError, DataFormatError
from emoreg.textemotion.validation import (
    EKMAN_GROUPS,
    balanced_accuracy,
    ekman_check,
    group_proba,
    read_ekman_rows,
    roc_auc,
)
from emoreg.vectors.corpus import BUILTIN_EMOTIONS

LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]


def test_ekman_groups_use_builtin_emotions_once_each():
    members = [e for group in EKMAN_GROUPS.values() for e in group]
    assert len(members) == len(set(members))
    assert set(members) <= set(BUILTIN_EMOTIONS)
    assert set(BUILTIN_EMOTIONS) - set(members) == {"bored", "jealous"}
    assert list(EKMAN_GROUPS) == ["anger", "disgust", "fear", "joy", "sadness", "surprise"]


def test_group_proba_sums_member_columns():
    emotions = ["a", "b", "c"]
    proba = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]])
    grouped = group_proba(proba, emotions, {"x": ("a", "c"), "y": ("b",)})
    assert torch.allclose(grouped, torch.tensor([[0.7, 0.3], [0.9, 0.1]]))
    with pytest.raises(ConfigError, match="'z'"):
        group_proba(proba, emotions, {"x": ("a", "z")})
    with pytest.raises(ConfigError, match=r"\[N, 2\]"):
        group_proba(proba, ["a", "b"], {"x": ("a",)})


def test_balanced_accuracy_averages_per_class_recall():
    # class 0: 3 of 4 right; class 1: 0 of 1 right; class 2 absent
    assert balanced_accuracy([0, 0, 0, 0, 1], [0, 0, 0, 1, 0], 3) == pytest.approx((0.75 + 0.0) / 2)
    with pytest.raises(ConfigError):
        balanced_accuracy([0, 1], [0], 2)
    with pytest.raises(ConfigError):
        balanced_accuracy([], [], 2)


def test_roc_auc_counts_pairs_and_ties():
    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert roc_auc([0.1], [0.9]) == 0.0
    assert roc_auc([0.5, 0.9], [0.5, 0.1]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    with pytest.raises(ConfigError):
        roc_auc([], [0.1])


def write_tsv(tmp_path, rows):
    (tmp_path / "ekman_labels.txt").write_text("\n".join(LABELS) + "\n")
    path = tmp_path / "dev.tsv"
    path.write_text("".join(f"{text}\t{ids}\tid{i}\n" for i, (text, ids) in enumerate(rows)))
    return path


def test_read_ekman_rows_keeps_single_label_emotions_and_samples_per_class(tmp_path):
    rows = [(f"angry {i}", "0") for i in range(5)] + [(f"glad {i}", "3") for i in range(3)]
    rows += [("both", "0,3"), ("nothing", "4")]
    path = write_tsv(tmp_path, rows)
    texts, labels = read_ekman_rows(path)
    assert labels == ["anger"] * 5 + ["joy"] * 3 and "both" not in texts and "nothing" not in texts
    sampled, sampled_labels = read_ekman_rows(path, per_class=2, seed=1)
    assert sorted(sampled_labels) == ["anger", "anger", "joy", "joy"]
    assert (sampled, sampled_labels) == read_ekman_rows(path, per_class=2, seed=1)
    with pytest.raises(ConfigError):
        read_ekman_rows(path, per_class=0)


def test_read_ekman_rows_names_a_bad_label_line(tmp_path):
    path = write_tsv(tmp_path, [("fine", "0"), ("broken", "9")])
    with pytest.raises(DataFormatError, match="line 2"):
        read_ekman_rows(path)


class KeywordClassifier:
    """Puts all probability on 'angry' for texts containing 'grr', else on 'happy'."""

    def __init__(self):
        self.emotions = list(BUILTIN_EMOTIONS)

    def predict_proba(self, texts):
        proba = torch.zeros(len(texts), len(self.emotions))
        for i, text in enumerate(texts):
            proba[i, self.emotions.index("angry" if "grr" in text else "happy")] = 1.0
        return proba


def test_ekman_check_scores_group_argmax(tmp_path):
    rows = [("grr no", "0"), ("grr", "0"), ("yay", "3"), ("grr yay", "3"), ("oh", "5")]
    result = ekman_check(KeywordClassifier(), write_tsv(tmp_path, rows))
    # anger 2/2, joy 1/2, sadness 0/1 -> (1 + 0.5 + 0) / 3
    assert result["balanced_accuracy"] == pytest.approx(0.5)
    assert result["per_class_recall"] == {"anger": 1.0, "joy": 0.5, "sadness": 0.0}
    assert result["n"] == 5 and result["chance"] == pytest.approx(1 / 3)


class SpreadClassifier(KeywordClassifier):
    """Spreads 0.4 over the eight joy emotions (0.05 each) and puts 0.3 on 'surprised'."""

    def predict_proba(self, texts):
        proba = torch.zeros(len(texts), len(self.emotions))
        for emotion in EKMAN_GROUPS["joy"]:
            proba[:, self.emotions.index(emotion)] = 0.05
        proba[:, self.emotions.index("surprised")] = 0.3
        return proba


def test_ekman_check_divides_group_probability_by_group_size(tmp_path):
    # joy has the larger sum (0.4 > 0.3) but the smaller probability per emotion (0.05 < 0.3)
    result = ekman_check(SpreadClassifier(), write_tsv(tmp_path, [("wow", "6"), ("glad", "3")]))
    assert result["per_class_recall"] == {"joy": 0.0, "surprise": 1.0}
