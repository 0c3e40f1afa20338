"""One identity per thing: a bundle's content hash and a model's fingerprint + content hash, wherever recorded."""

from __future__ import annotations

import torch
from torch import nn

from emoreg.evals.runner import run_suites
from emoreg.evals.suites.base import EvalContext
from emoreg.models.fingerprint import fingerprint_model, model_content_hash, model_identity
from emoreg.train.run import vectors_identity
from emoreg.vectors.bundle import EmotionVectors
from tests.eval_fakes import NllSuite, VectorSuite, write_items
from tests.regularizer_helpers import make_bundle

#: The shipped bundle's content hash: it is part of every eval cache key of a suite that reads vectors, so a
#: change here invalidates cached eval results.
DEFAULT_BUNDLE_HASH = "0abaab29c3d683fe1ce5dae366cca615b6093acdcde48e1f4d9d38aee986130f"


def test_default_bundle_content_hash_is_stable():
    assert EmotionVectors.from_pretrained("default").content_hash() == DEFAULT_BUNDLE_HASH


def test_content_hash_follows_content_not_files(tiny_llama, tmp_path):
    bundle = make_bundle(tiny_llama)
    bundle.save_pretrained(tmp_path / "bundle")
    loaded = EmotionVectors.from_pretrained(tmp_path / "bundle")
    assert loaded.content_hash() == bundle.content_hash()
    loaded.validation = {"note": "metadata is not content"}
    assert loaded.content_hash() == bundle.content_hash()
    assert make_bundle(tiny_llama, seed=1).content_hash() != bundle.content_hash()
    assert bundle.subset(layers=[2, 3]).content_hash() != bundle.content_hash()


def test_training_and_eval_records_name_a_bundle_alike(tiny_llama, tiny_tokenizer, tmp_path, monkeypatch):
    bundle = make_bundle(tiny_llama)
    bundle.save_pretrained(tmp_path / "bundle")
    loaded = EmotionVectors.from_pretrained(tmp_path / "bundle")
    trained_with = vectors_identity(str(tmp_path / "bundle"), loaded)
    monkeypatch.setattr(NllSuite, "builtin_files", {"main": write_items(tmp_path / "main.jsonl", 2, "main"),
                                                    "extra": write_items(tmp_path / "extra.jsonl", 1, "extra")})
    results = run_suites(EvalContext(model=tiny_llama, tokenizer=tiny_tokenizer, vectors=bundle), [VectorSuite()],
                         use_cache=False, progress=False)
    assert trained_with["fingerprint"] == results["vectors"]["fingerprint"] == bundle.content_hash()


def test_model_identity_is_the_fingerprint_and_the_content_hash(tiny_llama, tiny_tokenizer, tmp_path, monkeypatch):
    identity = model_identity(tiny_llama)
    assert identity.fingerprint == fingerprint_model(tiny_llama)
    assert identity.content_hash == model_content_hash(tiny_llama)
    assert model_identity(nn.Sequential(nn.Linear(2, 2))).fingerprint is None  # no decoder layers
    monkeypatch.setattr(NllSuite, "builtin_files", {"main": write_items(tmp_path / "main.jsonl", 2, "main"),
                                                    "extra": write_items(tmp_path / "extra.jsonl", 1, "extra")})
    results = run_suites(EvalContext(model=tiny_llama, tokenizer=tiny_tokenizer), [NllSuite()], use_cache=False,
                         progress=False)
    assert results["model"]["content_hash"] == identity.content_hash
    assert results["model"]["fingerprint"] == identity.fingerprint.to_dict()
    with torch.no_grad():
        tiny_llama.lm_head.weight.mul_(2.0)
    assert model_identity(tiny_llama).content_hash != identity.content_hash
