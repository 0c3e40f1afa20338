"""Labelled text as a direction source: reading, label maps, class-balanced caps, GoEmotions files."""

import json

import pytest

from emoreg.errors import ConfigError, DataFormatError
from emoreg.vectors.labelled import load_labelled, parse_label_map, read_goemotions_ekman


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_label_map_parsing():
    assert parse_label_map("joy=happy, sadness = sad") == {"joy": "happy", "sadness": "sad"}
    assert parse_label_map(None) == {}
    with pytest.raises(ConfigError, match=r"entry 'joy' must look like LABEL=EMOTION"):
        parse_label_map("joy")


def test_mapped_labels_and_skipped_rows(tmp_path):
    path = _write_jsonl(tmp_path / "l.jsonl", [
        {"body": "What a day, we won!", "tag": "joy"}, {"body": "It all went wrong.", "tag": "sadness"},
        {"body": "Best news ever.", "tag": "joy"}, {"body": "I miss her.", "tag": "sadness"},
        {"body": "Meh.", "tag": "other"},
    ])
    data = load_labelled(path, text_field="body", label_field="tag", label_map={"joy": "happy", "sadness": "sad"})
    assert [(t.emotion, t.text) for t in data.texts][:2] == [("happy", "What a day, we won!"),
                                                             ("sad", "It all went wrong.")]
    assert data.emotions == ["happy", "sad"]
    assert data.description["rows_skipped_unmapped"] == 1
    assert data.description["rows_per_emotion"] == {"happy": 2, "sad": 2}
    assert len(data.description["sha256"]) == 64


def test_without_a_map_labels_are_emotion_names(tmp_path):
    path = _write_jsonl(tmp_path / "l.jsonl", [{"text": f"t{i}", "label": "Calm" if i % 2 else "angry"}
                                               for i in range(4)])
    assert load_labelled(path).emotions == ["angry", "calm"]


def test_per_label_cap_is_balanced_seeded_and_keeps_file_order(tmp_path):
    rows = [{"text": f"happy {i}", "label": "happy"} for i in range(50)] + \
           [{"text": f"sad {i}", "label": "sad"} for i in range(5)]
    path = _write_jsonl(tmp_path / "l.jsonl", rows)
    a = load_labelled(path, per_label=10, seed=3)
    b = load_labelled(path, per_label=10, seed=3)
    c = load_labelled(path, per_label=10, seed=4)
    assert a.texts == b.texts and a.texts != c.texts
    assert a.description["rows_per_emotion"] == {"happy": 10, "sad": 5}
    order = [int(t.text.split()[1]) for t in a.texts if t.emotion == "happy"]
    assert order == sorted(order)
    with pytest.raises(ConfigError, match="per_label must be >= 2"):
        load_labelled(path, per_label=1)


def test_errors_name_the_file_line_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "l.jsonl", [{"text": "fine", "label": "happy"}, {"txt": "oops", "label": "sad"}])
    with pytest.raises(DataFormatError, match=r"l\.jsonl, line 2: missing field 'text'"):
        load_labelled(path)
    path = _write_jsonl(tmp_path / "m.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    with pytest.raises(DataFormatError, match=r"no rows with a mapped label \(labels seen: \['x', 'y'\]"):
        load_labelled(path, label_map={"joy": "happy"})
    path = _write_jsonl(tmp_path / "n.jsonl", [{"text": "a", "label": "happy"}, {"text": "b", "label": "happy"},
                                              {"text": "c", "label": "sad"}])
    with pytest.raises(DataFormatError, match=r"at least 2 labelled rows; too few for \{'sad': 1\}"):
        load_labelled(path)
    with pytest.raises(DataFormatError, match="no such file"):
        load_labelled(tmp_path / "missing.jsonl")


def test_goemotions_format(tmp_path):
    (tmp_path / "ekman_labels.txt").write_text("anger\ndisgust\nfear\njoy\nneutral\nsadness\nsurprise\n")
    tsv = tmp_path / "train.tsv"
    tsv.write_text("so glad\t3\ta\nugh no\t0\tb\nyay\t3\tc\ngrr\t0\td\nboth\t0,3\te\nplain\t4\tf\n"
                   "ok then\t4\tg\n")
    data = load_labelled(tsv, file_format="goemotions")
    assert [(t.emotion, t.text) for t in data.texts] == [("happy", "so glad"), ("angry", "ugh no"), ("happy", "yay"),
                                                         ("angry", "grr"), ("neutral", "plain"), ("neutral", "ok then")]
    assert data.emotions == ["happy", "angry"]  # neutral rows are the baseline, not an emotion
    assert data.description["format"] == "goemotions" and data.description["label_map"]["joy"] == "happy"
    raw = read_goemotions_ekman(tsv)
    assert raw.neutral == ["plain", "ok then"] and raw.labels == ["happy", "angry", "happy", "angry"]
