"""The eval cache: model content hashes, bundle fingerprints, keys, and resumable entries."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from emoreg.errors import ConfigError
from emoreg.evals.cache import CacheEntry, cache_key, default_cache_root
from emoreg.models.fingerprint import model_content_hash, sample_indices
from tests.regularizer_helpers import make_bundle
from tests.tiny_models import make_tiny_llama


def test_content_hash_is_stable_and_follows_every_change(tiny_llama):
    reference = model_content_hash(tiny_llama)
    assert reference == model_content_hash(tiny_llama) == model_content_hash(copy.deepcopy(tiny_llama))
    assert reference == model_content_hash(make_tiny_llama())  # same seed, same weights
    embeddings = tiny_llama.get_input_embeddings().weight
    n = embeddings.numel()
    sampled = set(sample_indices(n).tolist())
    element = next(i for i in range(n) if i not in sampled)  # a change the strided sample cannot see
    with torch.no_grad():
        embeddings.view(-1)[element] += 1e-4
    assert model_content_hash(tiny_llama) != reference
    with torch.no_grad():
        embeddings.view(-1)[element] -= 1e-4
    assert model_content_hash(tiny_llama) == reference
    assert model_content_hash(make_tiny_llama().to(torch.bfloat16)) != reference


def test_content_hash_sees_merged_lora():
    peft = pytest.importorskip("peft")
    base = make_tiny_llama()
    reference = model_content_hash(base)
    config = peft.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    merged = peft.get_peft_model(copy.deepcopy(base), config).merge_and_unload()
    assert [n for n, _ in merged.named_parameters()] == [n for n, _ in base.named_parameters()]
    assert model_content_hash(merged) != reference


def test_sample_indices_cover_large_tensors_exactly():
    n = 28_311_552  # SmolLM2's embedding: float32 linspace would round the last index past the end
    index = sample_indices(n)
    assert len(index) == 4096 and index[0] == 0 and index[-1] == n - 1 and bool((index.diff() > 0).all())
    assert sample_indices(3).tolist() == [0, 1, 2] and sample_indices(1).tolist() == [0]


def test_vectors_fingerprint(tiny_llama):
    bundle = make_bundle(tiny_llama)
    assert bundle.content_hash() == make_bundle(tiny_llama).content_hash()
    assert bundle.content_hash() != make_bundle(tiny_llama, seed=1).content_hash()
    assert bundle.content_hash() != bundle.subset(emotions=["calm", "desperate"]).content_hash()


def test_cache_key_is_canonical():
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2})
    assert len(cache_key({})) == 64


def test_default_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EMOREG_CACHE", str(tmp_path))
    assert default_cache_root() == tmp_path / "evals"


def test_entry_appends_reads_and_completes(tmp_path):
    with CacheEntry(tmp_path, "k", {"what": "test"}) as entry:
        assert entry.records() == [] and not entry.is_complete()
        entry.append({"id": "a", "score": 1})
        entry.append({"id": "b", "score": 2})
        # appended records are on disk at once (another process could read them)
        assert len((tmp_path / "k" / "records.jsonl").read_text().splitlines()) == 2
        entry.complete({"m": {"value": 1.5, "ci": [1, 2], "n": 2}})
    again = CacheEntry(tmp_path, "k")
    assert again.is_complete() and again.metrics()["m"]["value"] == 1.5
    assert [r["id"] for r in again.records()] == ["a", "b"]
    assert json.loads((tmp_path / "k" / "key.json").read_text()) == {"what": "test"}


def test_entry_drops_a_line_cut_short_by_a_crash(tmp_path):
    directory = tmp_path / "k"
    directory.mkdir()
    (directory / "records.jsonl").write_text('{"id": "a"}\nnot json\n{"id": "b"}\n{"id": "c", "sco')
    with CacheEntry(tmp_path, "k") as entry:
        assert [r["id"] for r in entry.records()] == ["a", "b"]
        entry.append({"id": "c"})
    assert (directory / "records.jsonl").read_text() == '{"id": "a"}\n{"id": "b"}\n{"id": "c"}\n'


def test_entry_is_locked_while_in_use(tmp_path):
    second = CacheEntry(tmp_path, "k")
    with CacheEntry(tmp_path, "k"), pytest.raises(ConfigError, match="another emoreg eval is writing"):
        second.__enter__()
    with CacheEntry(tmp_path, "k"):  # released afterwards
        pass
