"""Loading checkpoints for evaluation: full saves, PEFT adapters (merged), ZeRO shards and other errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from emoreg.errors import ModelLoadError
from emoreg.models.checkpoint import load_for_eval
from tests.tiny_models import make_tiny_llama

peft = pytest.importorskip("peft")

IDS = torch.tensor([[10, 20, 30, 40, 50, 60]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _save_base(tmp_path, tokenizer):
    base_dir = tmp_path / "base"
    model = make_tiny_llama()
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    return base_dir


def _save_adapter(base_dir, out_dir):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = peft.get_peft_model(base, config)
    adapted.save_pretrained(out_dir)
    return _logits(adapted.eval())


def test_full_save_with_training_files(tmp_path, tiny_tokenizer):
    model = make_tiny_llama()
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    save = tmp_path / "checkpoint-4"
    model.save_pretrained(save)
    tiny_tokenizer.save_pretrained(save)
    (save / "emoreg_config.json").write_text(json.dumps({"config": {"emotions": {"desperate": 1.0}}}))
    (save / "emoreg_train.json").write_text(json.dumps({"base_model": "default", "recipe": {}}))
    loaded, tokenizer, info = load_for_eval(str(save))
    torch.testing.assert_close(_logits(loaded), _logits(model))
    assert not loaded.training and tokenizer.pad_token is not None
    assert info.kind == "directory" and info.base == "default"
    assert info.emoreg_config["config"]["emotions"] == {"desperate": 1.0}
    assert info.to_dict()["train_info"]["base_model"] == "default"


def test_full_save_without_tokenizer_takes_the_base_tokenizer(tmp_path, tiny_tokenizer):
    base_dir = _save_base(tmp_path, tiny_tokenizer)
    save = tmp_path / "run"
    make_tiny_llama().save_pretrained(save)
    (save / "emoreg_train.json").write_text(json.dumps({"base_model": str(base_dir)}))
    _, tokenizer, info = load_for_eval(str(save))
    assert tokenizer.chat_template == tiny_tokenizer.chat_template and info.base == str(base_dir)


def test_peft_adapter_is_merged(tmp_path, tiny_tokenizer):
    base_dir = _save_base(tmp_path, tiny_tokenizer)
    adapter_dir = tmp_path / "adapter"
    expected = _save_adapter(base_dir, adapter_dir)
    loaded, tokenizer, info = load_for_eval(str(adapter_dir))
    assert not any("lora" in name for name, _ in loaded.named_parameters())  # merged, plain model
    torch.testing.assert_close(_logits(loaded), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(_logits(loaded), _logits(make_tiny_llama()))  # the adapter changed something
    assert info.kind == "peft_adapter" and info.base == str(base_dir)
    assert info.adapter["peft_type"] == "LORA" and tokenizer.chat_template == tiny_tokenizer.chat_template


def test_adapter_base_from_training_info_wins(tmp_path, tiny_tokenizer):
    base_dir = _save_base(tmp_path, tiny_tokenizer)
    adapter_dir = tmp_path / "adapter"
    expected = _save_adapter(base_dir, adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "/nowhere/cached-copy-of-the-base"
    config_path.write_text(json.dumps(config))
    (adapter_dir / "emoreg_train.json").write_text(json.dumps({"base_model": str(base_dir)}))
    loaded, _, info = load_for_eval(str(adapter_dir))
    torch.testing.assert_close(_logits(loaded), expected, rtol=1e-4, atol=1e-5)
    assert info.base == str(base_dir) and info.adapter["base_model_name_or_path"] == "/nowhere/cached-copy-of-the-base"


def test_adapter_with_missing_base_names_it(tmp_path, tiny_tokenizer):
    base_dir = _save_base(tmp_path, tiny_tokenizer)
    adapter_dir = tmp_path / "adapter"
    _save_adapter(base_dir, adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="base_model_name_or_path' is empty"):
        load_for_eval(str(adapter_dir))
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="base model .*gone.* of the PEFT adapter"):
        load_for_eval(str(adapter_dir))


def test_zero_shards_only(tmp_path):
    save = tmp_path / "checkpoint-8"
    (save / "global_step8").mkdir(parents=True)
    (save / "global_step8" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"")
    (save / "zero_to_fp32.py").write_text("# DeepSpeed's script\n")
    copy.deepcopy(make_tiny_llama().config).save_pretrained(save)
    with pytest.raises(ModelLoadError, match="stage3_gather_16bit_weights_on_model_save.*zero_to_fp32.py"):
        load_for_eval(str(save))


def test_training_output_dir_lists_its_checkpoints(tmp_path):
    for step in (10, 2):
        (tmp_path / "run" / f"checkpoint-{step}").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"choose one of its checkpoints: .*checkpoint-2, .*checkpoint-10"):
        load_for_eval(str(tmp_path / "run"))


def test_directory_without_model_lists_what_it_found(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="holds no model: .*found notes.txt"):
        load_for_eval(str(tmp_path / "stuff"))


def test_invalid_training_info(tmp_path):
    (tmp_path / "emoreg_train.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="emoreg_train.json: not valid JSON"):
        load_for_eval(str(tmp_path))


@pytest.mark.slow
def test_default_model_reference():
    model, _, info = load_for_eval("default")
    assert info.kind == "default" and info.base is None and model.config.num_hidden_layers == 30


def test_pickle_only_weights_are_refused_before_loading(tmp_path, tiny_tokenizer, monkeypatch):
    model = make_tiny_llama()
    model.save_pretrained(tmp_path / "m")
    # the name decides (the check runs before anything is read): a pickle checkpoint's weight file
    (tmp_path / "m" / "model.safetensors").rename(tmp_path / "m" / "pytorch_model.bin")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    assert not list((tmp_path / "m").glob("*.safetensors"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("unpickled")))
    with pytest.raises(ModelLoadError, match=r"only as pickle files \(pytorch_model.bin\); emoreg loads safetensors"):
        load_for_eval(str(tmp_path / "m"))
