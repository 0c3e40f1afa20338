import torch

from emoreg.models.fingerprint import ModelFingerprint, fingerprint_model
from tests.tiny_models import make_tiny_llama, make_tiny_model


def test_fingerprint_fields():
    fp = fingerprint_model(make_tiny_llama())
    assert fp.architecture == "LlamaForCausalLM"
    assert fp.model_type == "llama"
    assert fp.hidden_size == 64 and fp.num_layers == 4
    assert fp.weights_sha256 and len(fp.weights_sha256) == 64
    assert ModelFingerprint.from_dict(fp.to_dict()) == fp


def test_hash_is_stable_across_dtype_and_changes_with_weights():
    a = fingerprint_model(make_tiny_llama(seed=0))
    b = fingerprint_model(make_tiny_llama(seed=0).to(torch.bfloat16))
    c = fingerprint_model(make_tiny_llama(seed=1))
    assert a.weights_sha256 == b.weights_sha256
    assert a.weights_sha256 != c.weights_sha256


def test_fingerprint_through_peft_wrapper():
    from peft import LoraConfig, get_peft_model

    model = make_tiny_llama()
    plain = fingerprint_model(model)
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert fingerprint_model(wrapped) == plain


def test_meta_weights_give_no_hash():
    with torch.device("meta"):
        model = make_tiny_model("llama")
    assert fingerprint_model(model).weights_sha256 is None
