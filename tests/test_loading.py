import json

import pytest
import torch

from emoreg.errors import ModelLoadError
from emoreg.models.loading import (
    DEFAULT_MODEL,
    cache_dir,
    default_gguf_path,
    load_model_and_tokenizer,
    resolve_model_source,
)
from tests.tiny_models import make_tiny_llama, make_tiny_tokenizer


def test_resolve_sources(tmp_path):
    assert resolve_model_source(DEFAULT_MODEL).kind == "default"
    (tmp_path / "m.gguf").write_bytes(b"x")
    source = resolve_model_source(str(tmp_path / "m.gguf"))
    assert (source.kind, source.gguf_file) == ("gguf", "m.gguf")
    assert resolve_model_source(str(tmp_path)).kind == "directory"
    assert resolve_model_source("org/model").kind == "hub"
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_source(str(tmp_path / "missing.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        resolve_model_source(str(tmp_path / "weights.bin"))


def test_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EMOREG_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path


def test_load_directory_sets_pad_token_and_dtype(tmp_path):
    make_tiny_llama().save_pretrained(tmp_path)
    tokenizer = make_tiny_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    model, loaded = load_model_and_tokenizer(str(tmp_path), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert loaded.pad_token == loaded.eos_token
    assert not model.training


def test_bad_dtype(tmp_path):
    make_tiny_llama().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="unknown dtype 'fp8'"):
        load_model_and_tokenizer(str(tmp_path), dtype="fp8")


def test_directory_with_a_non_causal_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10, "hidden_size": 8,
                                                      "num_hidden_layers": 1, "num_attention_heads": 1,
                                                      "intermediate_size": 8}))
    with pytest.raises(ModelLoadError, match="as a causal language model"):
        load_model_and_tokenizer(str(tmp_path))


@pytest.mark.slow
def test_default_model_is_trainable_and_cached(monkeypatch, tmp_path):
    """The embedded GGUF loads dequantised (trainable), and the converted copy is reused."""
    monkeypatch.setenv("EMOREG_CACHE", str(tmp_path))
    assert default_gguf_path().is_file()
    model, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert getattr(model, "hf_quantizer", None) is None
    assert not getattr(model, "is_quantized", False)
    assert (tmp_path / "models").is_dir()
    cached = next((tmp_path / "models").iterdir())
    mtime = (cached / "config.json").stat().st_mtime
    model2, _ = load_model_and_tokenizer(DEFAULT_MODEL)
    assert (cached / "config.json").stat().st_mtime == mtime  # not converted again
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert tokenizer.pad_token is not None


@pytest.mark.parametrize("ref", ["./runs/missing", "/nowhere/at/all", "~/no-such-model-dir", "a/b/c", "runs/missin"])
def test_a_mistyped_local_path_fails_at_once_without_the_hub(tmp_path, monkeypatch, ref):
    import emoreg.models.loading as loading

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "missing-not").mkdir(parents=True)
    (tmp_path / "runs" / "missing").mkdir()
    if ref == "./runs/missing":
        ref = "./runs/missng"
    monkeypatch.setattr(loading, "_load_hub", lambda *a, **k: (_ for _ in ()).throw(AssertionError("hub used")))
    with pytest.raises(ModelLoadError, match="no such model directory or file") as info:
        loading.load_model_and_tokenizer(ref)
    if ref.startswith(("./runs", "runs/")):
        assert "did you mean 'runs/missing'" in str(info.value)


def test_a_hub_id_is_still_a_hub_id_and_an_unreachable_hub_is_not_retried(monkeypatch):
    import emoreg.models.loading as loading

    assert loading.resolve_model_source("org/name").kind == "hub"
    calls = []

    class Fake:
        @staticmethod
        def from_pretrained(model_id, **kwargs):
            calls.append(kwargs.get("local_files_only"))
            raise OSError("not cached")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_causal_lm_classes", lambda: (Fake, Fake))
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache and the hub cannot be reached"):
        loading.load_model_and_tokenizer("org/name")
    assert calls == [True]
