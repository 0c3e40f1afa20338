"""A directory of one safetensors file and one JSON file: atomic saving, recognising, reading with clear errors."""

import json

import pytest
import torch
from safetensors import safe_open

from emoreg.errors import BundleError, ConfigError
from emoreg.utils.tensorfile import TensorDirectory

FILES = TensorDirectory("thing.safetensors", "thing.json", format="emoreg-thing", format_version=3, kind="thing",
                        what="a thing")
TENSORS = {"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "bias": torch.ones(2)}


def test_save_writes_both_files_and_reads_them_back(tmp_path):
    path = FILES.save(tmp_path / "t", TENSORS, {"format": "emoreg-thing", "note": [1, 2]})
    assert path == tmp_path / "t" and sorted(p.name for p in path.iterdir()) == ["thing.json", "thing.safetensors"]
    assert (path / "thing.json").read_text(encoding="utf-8") == json.dumps(
        {"format": "emoreg-thing", "note": [1, 2]}, indent=2) + "\n"
    with safe_open(str(path / "thing.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": "emoreg-thing", "format_version": "3"}
    meta_path, meta = FILES.read_metadata(path)
    assert meta_path == path / "thing.json" and meta == {"format": "emoreg-thing", "note": [1, 2]}
    tensors = FILES.read_tensors(path, required=("weight", "bias"))
    assert all(torch.equal(tensors[name], TENSORS[name]) for name in TENSORS)
    assert FILES.holds(path) and not FILES.holds(tmp_path) and not FILES.holds(tmp_path / "missing")


def test_non_contiguous_tensors_are_saved(tmp_path):
    transposed = TENSORS["weight"].T
    FILES.save(tmp_path / "t", {"weight": transposed}, {"format": "emoreg-thing"})
    assert torch.equal(FILES.read_tensors(tmp_path / "t", required=())["weight"], transposed)


def test_other_files_are_kept_only_when_asked(tmp_path):
    path = FILES.save(tmp_path / "t", TENSORS, {"format": "emoreg-thing"})
    (path / "report.md").write_text("kept")
    (path / "plots").mkdir()
    (path / "plots" / "a.png").write_bytes(b"png")
    FILES.save(path, TENSORS, {"format": "emoreg-thing"}, keep_other_files=True)
    assert (path / "report.md").read_text() == "kept" and (path / "plots" / "a.png").read_bytes() == b"png"
    FILES.save(path, TENSORS, {"format": "emoreg-thing"})
    assert sorted(p.name for p in path.iterdir()) == ["thing.json", "thing.safetensors"]


def test_save_refuses_to_replace_what_it_does_not_hold(tmp_path):
    other = tmp_path / "project"
    other.mkdir()
    (other / "main.py").write_text("x")
    with pytest.raises(ConfigError, match="does not hold a thing"):
        FILES.save(other, TENSORS, {"format": "emoreg-thing"})
    FILES.save(tmp_path / "wrong-format", TENSORS, {"format": "something-else"})
    with pytest.raises(ConfigError, match="does not hold a thing"):
        FILES.save(tmp_path / "wrong-format", TENSORS, {"format": "emoreg-thing"})
    assert (other / "main.py").read_text() == "x"


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(BundleError, match=r"missing: no such thing directory \(expected thing.safetensors and "
                                          r"thing.json\)"):
        FILES.read_metadata(tmp_path / "missing")
    path = FILES.save(tmp_path / "t", TENSORS, {"format": "emoreg-thing"})
    (path / "thing.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BundleError, match=r"thing.json: not valid JSON \(Expecting property name"):
        FILES.read_metadata(path)
    (path / "thing.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(BundleError, match=r"thing.json: not valid JSON \(not UTF-8\)"):
        FILES.read_metadata(path)
    (path / "thing.json").write_text("[1, 2]", encoding="utf-8")
    assert FILES.read_metadata(path)[1] == [1, 2]  # checking the value is the owner's job
    with pytest.raises(BundleError, match=r"thing.safetensors: missing tensor 'scale'"):
        FILES.read_tensors(path, required=("weight", "scale"))
    (path / "thing.safetensors").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="thing.safetensors: cannot read safetensors file"):
        FILES.read_tensors(path, required=())
    (path / "thing.safetensors").unlink()
    with pytest.raises(BundleError, match="not a thing, thing.safetensors is missing"):
        FILES.read_metadata(path)
