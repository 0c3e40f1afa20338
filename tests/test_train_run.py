"""emoreg.train.run: tiny-model SFT, DPO and GRPO recipes train, save checkpoints with emoreg files and log emoreg/.

The helpers here (a tiny random Llama saved with save_pretrained, a bundle that fits it, small JSONL data,
a recipe dict) are shared with tests/test_train_resume.py and tests/test_train_deepspeed.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from emoreg.errors import ConfigError, DataFormatError
from emoreg.train.recipe import recipe_from_dict
from tests.regularizer_helpers import make_bundle
from tests.tiny_models import make_tiny_llama, make_tiny_tokenizer

REGULARIZER = {"emotions": {"desperate": 1.0, "hostile": {"weight": 0.5, "kind": "band", "band_k": 1.0}},
               "kind": "hinge", "coef": 0.5, "layers": [2], "selection": "completion"}


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tiny_rows(trainer_type: str, n: int = 16) -> list[dict[str, Any]]:
    """Small rows of each trainer's format (prompts of different lengths)."""
    if trainer_type == "sft":
        return [{"messages": [{"role": "user", "content": f"question {i}: is the build broken" + "?" * (i % 4)},
                              {"role": "assistant", "content": f"please, I beg you, fix bug {i} now"}]}
                for i in range(n)]
    if trainer_type == "dpo":
        return [{"prompt": f"the deadline {i} is close" + "!" * (i % 3), "chosen": " we plan it step by step",
                 "rejected": " please, anything, I am begging"} for i in range(n)]
    return [{"prompt": f"task {i}: the tests fail" + "." * (i % 3)} for i in range(n)]


def tiny_assets(root: Path) -> dict[str, str]:
    """A tiny random Llama + tokenizer saved as a model directory, and a bundle that fits it."""
    root.mkdir(parents=True, exist_ok=True)
    model = make_tiny_llama()
    model.save_pretrained(root / "model")
    make_tiny_tokenizer().save_pretrained(root / "model")
    make_bundle(model).save_pretrained(root / "bundle")
    return {"model": str(root / "model"), "bundle": str(root / "bundle")}


def tiny_recipe(root: Path, trainer_type: str = "sft", assets: dict[str, str] | None = None,
                **args: Any) -> dict[str, Any]:
    """A recipe dict for ``trainer_type`` on the tiny model (2 steps, a checkpoint every step)."""
    assets = assets or tiny_assets(root / "assets")
    data = write_rows(root / f"{trainer_type}.jsonl", tiny_rows(trainer_type))
    trainer_args = {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3, "logging_steps": 1,
                    "save_strategy": "steps", "save_steps": 1, "report_to": "none", "use_cpu": True,
                    "max_length": 64, "disable_tqdm": True}
    trainer: dict[str, Any] = {"type": trainer_type, "args": {**trainer_args, **args}}
    if trainer_type == "grpo":
        trainer["args"].pop("max_length")
        trainer["args"].update(num_generations=2, max_completion_length=8, per_device_train_batch_size=4)
        trainer["reward_funcs"] = ["calm_keywords", "length_penalty"]
    return {
        "model": {"ref": assets["model"]},
        "data": {"source": str(data)},
        "trainer": trainer,
        "emoreg": {"enabled": True, "vectors": assets["bundle"], "regularizer": dict(REGULARIZER)},
        "output_dir": str(root / "out"),
        "seed": 0,
    }


def _training_logs(history: list[dict]) -> list[dict]:
    return [entry for entry in history if "loss" in entry]


def test_sft_run_writes_checkpoints_with_emoreg_files_and_logs_metrics(tmp_path):
    from emoreg.models.provenance import TRAIN_INFO_FILE
    from emoreg.train.run import train

    recipe = recipe_from_dict(tiny_recipe(tmp_path, "sft"))
    result = train(recipe)

    assert result.global_step == 2 and result.final_loss is not None and math.isfinite(result.final_loss)
    logs = _training_logs(result.log_history)
    assert len(logs) == 2
    for entry in logs:
        assert entry["emoreg/desperate/L2/penalty"] >= 0 and entry["emoreg/coef"] == 0.5
        assert entry["emoreg/L2/tokens"] > 0
    out = Path(recipe.output_dir)
    for directory in (out / "checkpoint-1", out / "checkpoint-2", out):
        for name in (TRAIN_INFO_FILE, "emoreg_config.json", "emoreg_state.json"):
            assert (directory / name).is_file(), directory / name
        info = json.loads((directory / TRAIN_INFO_FILE).read_text())
        assert info["base_model"] == recipe.model.ref
        assert info["recipe"]["trainer"]["args"]["max_steps"] == 2
        assert info["regularizer"]["kind"] == "hinge" and info["regularizer"]["emotions"]["desperate"] == 1.0
        assert info["vectors"]["ref"] == recipe.emoreg.vectors and len(info["vectors"]["fingerprint"]) == 64
        assert info["emoreg_version"]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()

    # The saved model loads back and differs from the initial weights (it trained).
    from emoreg.models.loading import load_model_and_tokenizer

    trained, _ = load_model_and_tokenizer(str(out))
    initial = make_tiny_llama()
    assert any(not torch.equal(p, q) for p, q in zip(trained.parameters(), initial.parameters(), strict=True))


def test_sft_without_emoreg_writes_train_info_with_null_regularizer(tmp_path):
    from emoreg.models.provenance import TRAIN_INFO_FILE
    from emoreg.train.run import train

    data = tiny_recipe(tmp_path, "sft", max_steps=1, save_strategy="no")
    data["emoreg"]["enabled"] = False
    result = train(recipe_from_dict(data))
    info = json.loads((Path(result.output_dir) / TRAIN_INFO_FILE).read_text())
    assert info["regularizer"] is None and info["vectors"] is None
    assert not any(k.startswith("emoreg/") for entry in result.log_history for k in entry)
    assert not (Path(result.output_dir) / "emoreg_state.json").exists()


def test_dpo_with_lora_runs_two_steps(tmp_path):
    from emoreg.train.run import train

    data = tiny_recipe(tmp_path, "dpo", save_strategy="no")
    data["model"]["lora"] = {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    result = train(recipe_from_dict(data))
    logs = _training_logs(result.log_history)
    assert result.global_step == 2 and len(logs) == 2
    assert all(math.isfinite(entry["loss"]) and "emoreg/desperate/L2/z" in entry for entry in logs)
    assert (Path(result.output_dir) / "adapter_config.json").is_file()


def test_grpo_runs_two_steps_with_builtin_rewards(tmp_path):
    from emoreg.train.run import train

    result = train(recipe_from_dict(tiny_recipe(tmp_path, "grpo", save_strategy="no")))
    logs = _training_logs(result.log_history)
    assert result.global_step == 2 and len(logs) == 2
    for entry in logs:
        assert "rewards/calm_keywords/mean" in entry and "rewards/length_penalty/mean" in entry
        assert entry["emoreg/L2/tokens"] > 0


def test_bad_data_fails_before_the_model_loads(tmp_path, monkeypatch):
    from emoreg.models import loading
    from emoreg.train.run import train

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model_and_tokenizer", refuse)
    data = tiny_recipe(tmp_path, "dpo")
    write_rows(Path(data["data"]["source"]), [{"prompt": "a", "chosen": "b"}])
    with pytest.raises(DataFormatError, match=r"dpo\.jsonl, line 1: a dpo row needs prompt\+chosen\+rejected"):
        train(recipe_from_dict(data))


def test_trl_value_errors_become_config_errors(tmp_path):
    from emoreg.train.run import build_training_args

    data = tiny_recipe(tmp_path, "grpo", assets={"model": "unused", "bundle": "unused"})
    data["trainer"]["args"]["num_generations"] = 3  # batch 4 is not a multiple of 3
    with pytest.raises(ConfigError, match=r"trainer\.args: trl\.GRPOConfig rejected"):
        build_training_args(recipe_from_dict(data))


def test_resume_true_without_checkpoint_is_an_error(tmp_path):
    from emoreg.train.run import resolve_resume

    data = tiny_recipe(tmp_path, "sft", assets={"model": "unused", "bundle": "unused"})
    data["resume_from_checkpoint"] = True
    with pytest.raises(ConfigError, match="has no checkpoint-N directory"):
        resolve_resume(recipe_from_dict(data))


def test_bf16_follows_the_hardware_unless_set(tmp_path):
    from emoreg.train.run import build_training_args

    data = tiny_recipe(tmp_path, "sft", assets={"model": "unused", "bundle": "unused"})
    args = build_training_args(recipe_from_dict(data))
    assert args.bf16 is torch.cuda.is_available() and args.seed == 0 and args.output_dir == data["output_dir"]
    assert args.activation_checkpointing is False


def test_eval_block_attaches_the_eval_callback_with_the_recipe_settings(tmp_path):
    pytest.importorskip("emoreg.integrations.eval_callback")
    from emoreg.integrations.eval_callback import EmoRegEvalCallback
    from emoreg.train.run import TrainInfoCallback, build_trainer

    data = tiny_recipe(tmp_path, "sft")
    data["eval"] = {"enabled": True, "suites": ["capability"], "every_n_steps": 2, "limit": 3, "max_new_tokens": 8}
    trainer, emoreg_callback = build_trainer(recipe_from_dict(data))
    callbacks = trainer.callback_handler.callbacks
    evals = [c for c in callbacks if isinstance(c, EmoRegEvalCallback)]
    assert len(evals) == 1 and emoreg_callback in callbacks
    assert any(isinstance(c, TrainInfoCallback) for c in callbacks)
    callback = evals[0]
    assert [s.name for s in callback.suites] == ["capability"] and callback.every_n_steps == 2
    assert callback.limit == 3 and callback.max_new_tokens == 8 and callback.trainer is trainer
    assert callback.vectors == data["emoreg"]["vectors"] and callback.base_model == data["model"]["ref"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r["emotions"].update({"desprate": 1.0}),
     r"emoreg\.regularizer\.emotions: emotion 'desprate' is not in the bundle \(did you mean 'desperate'\?\)"),
    (lambda r: r.update({"layers": [7]}), r"emoreg\.regularizer\.layers: layer 7 is not in the bundle"),
])
def test_regularizer_emotions_and_layers_are_checked_before_the_model_loads(tmp_path, monkeypatch, change, message):
    from emoreg.models import loading
    from emoreg.train.run import train

    monkeypatch.setattr(loading, "load_model_and_tokenizer",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("the model was loaded")))
    data = tiny_recipe(tmp_path, "sft")
    data["emoreg"]["regularizer"] = {**REGULARIZER, "emotions": dict(REGULARIZER["emotions"])}
    change(data["emoreg"]["regularizer"])
    with pytest.raises(ConfigError, match=message):
        train(recipe_from_dict(data))
