import json
import logging

import pytest
import torch

from emoreg.errors import BundleError, DataFormatError
from emoreg.vectors.extraction import extract_emotion_vectors
from emoreg.vectors.scan import read_scan_rows, scan_rows, write_scan
from emoreg.vectors.tokens import content_mask
from tests.helpers import synthetic_corpus


@pytest.fixture
def vectors(tiny_llama, tiny_tokenizer):
    return extract_emotion_vectors(tiny_llama, tiny_tokenizer, synthetic_corpus(), progress=False).vectors


def test_read_rows_uses_id_or_index(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"text": "y"}\n')
    rows = read_scan_rows(path)
    assert [(r.id, r.text, r.line) for r in rows] == [("a", "x", 1), (1, "y", 2)]
    csv = tmp_path / "d.csv"
    csv.write_text("body\nhello\n")
    assert read_scan_rows(csv, text_field="body")[0].id == 0


def test_missing_text_field_names_line_and_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "x"}\n{"body": "y"}\n')
    with pytest.raises(DataFormatError, match=r"d.jsonl, line 2: missing field 'text'.*\['body'\]"):
        read_scan_rows(path)


def test_scan_matches_manual_projection(tmp_path, vectors, tiny_llama, tiny_tokenizer):
    path = tmp_path / "d.jsonl"
    texts = ["a sunny day of songs", "dark alley footsteps at night, running and running", "ok"]
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    results = list(scan_rows(tiny_llama, tiny_tokenizer, vectors, read_scan_rows(path), layer=2, batch_size=2,
                             progress=False))
    assert [r["id"] for r in results] == [0, 1, 2]
    for text, result in zip(texts, results):
        enc = tiny_tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            hidden = tiny_llama(**enc, output_hidden_states=True).hidden_states[3][0]
        expected = hidden[content_mask(enc["attention_mask"])[0]].mean(0) @ vectors.directions(2).T
        got = torch.tensor([result["projection"][e] for e in vectors.emotions])
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
        z = torch.tensor([result["z"][e] for e in vectors.emotions])
        torch.testing.assert_close(z, vectors.standardize(expected, 2), atol=1e-2, rtol=1e-3)
        assert result["layer"] == 2


def test_long_rows_are_truncated_with_a_warning(tmp_path, vectors, tiny_llama, tiny_tokenizer, caplog):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "word " * 400}) + "\n" + json.dumps({"text": "short"}) + "\n")
    with caplog.at_level(logging.WARNING):
        results = list(scan_rows(tiny_llama, tiny_tokenizer, vectors, read_scan_rows(path), max_length=64,
                                 progress=False))
    assert results[0]["truncated"] and results[0]["n_tokens"] == 64
    assert not results[1]["truncated"]
    assert "truncated" in caplog.text


def test_unknown_layer_is_an_error(tmp_path, vectors, tiny_llama, tiny_tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "x"}\n')
    with pytest.raises(BundleError, match="layer 9 is not in the bundle"):
        list(scan_rows(tiny_llama, tiny_tokenizer, vectors, read_scan_rows(path), layer=9, progress=False))


def test_write_scan_is_atomic(tmp_path):
    out = tmp_path / "scores.jsonl"

    def failing():
        yield {"id": 0}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_scan(failing(), out)
    assert not out.exists()
    assert write_scan(iter([{"id": 0}, {"id": 1}]), out) == 2
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.parametrize(("name", "content"), [("e.jsonl", ""), ("e.csv", ""), ("h.csv", "id,text\n"),
                                               ("b.jsonl", "\n\n")])
def test_an_empty_file_is_a_clear_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataFormatError, match=rf"{name}: no rows to score"):
        read_scan_rows(path)


def test_a_missing_csv_column_is_reported_at_the_header(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,body\n\n\nx1,a sunny picnic\n")
    with pytest.raises(DataFormatError, match=r"d.csv, line 1 \(header\): no column 'text'; the header has "
                                              r"\['id', 'body'\] \(choose one with --text-field\)"):
        read_scan_rows(path)


def test_cli_scan_refuses_an_output_directory_before_any_model_loads(tmp_path, capsys, monkeypatch):
    from emoreg.cli.main import main
    from emoreg.models import loading

    monkeypatch.setattr(loading, "load_model_and_tokenizer",
                        lambda *a, **k: pytest.fail("the model loaded before --out was checked"))
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "hello"}\n')
    (tmp_path / "outdir").mkdir()
    assert main(["scan", "--data", str(data), "--out", str(tmp_path / "outdir"), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "outdir is a directory; give a file path for the scan output" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outdir", "rows.jsonl"]
