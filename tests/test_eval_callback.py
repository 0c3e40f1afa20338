"""EmoRegEvalCallback with SFTTrainer on a tiny model: metrics at the right steps, training undisturbed."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from emoreg.errors import ConfigError
from emoreg.integrations import attach
from emoreg.integrations.eval_callback import EmoRegEvalCallback, attach_eval, flatten_metrics
from tests.eval_fakes import NllSuite, write_items
from tests.regularizer_helpers import make_bundle
from tests.tiny_models import make_tiny_llama, make_tiny_tokenizer

trl = pytest.importorskip("trl")

ARGS = {"learning_rate": 1e-2, "optim": "sgd", "lr_scheduler_type": "constant", "max_grad_norm": 0.0,
        "weight_decay": 0.0, "report_to": "none", "use_cpu": True, "save_strategy": "no", "logging_steps": 1,
        "seed": 0, "data_seed": 0, "max_steps": 4, "per_device_train_batch_size": 2, "gradient_checkpointing": False}


@pytest.fixture
def data_files(tmp_path, monkeypatch):
    files = {"main": write_items(tmp_path / "data" / "main.jsonl", 5, "main"),
             "extra": write_items(tmp_path / "data" / "extra.jsonl", 2, "extra")}
    monkeypatch.setattr(NllSuite, "builtin_files", files)
    return files


def _trainer(tmp_path, model, **overrides):
    texts = [f"line {i}: the tests keep failing and the release is {'soon' * (i % 3 + 1)}" for i in range(16)]
    args = trl.SFTConfig(output_dir=str(tmp_path / "run"), **{**ARGS, **overrides})
    return trl.SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}),
                          processing_class=make_tiny_tokenizer())


REG_CONFIG = {"emotions": {"desperate": 1.0}, "layers": [2], "coef": 0.1}


@pytest.mark.parametrize("how", ["callbacks", "attach_eval"])
def test_metrics_logged_at_eval_steps_and_training_undisturbed(tmp_path, data_files, how):
    bundle = make_bundle(make_tiny_llama())
    trainer = _trainer(tmp_path, make_tiny_llama())
    attach(trainer, bundle, REG_CONFIG)
    seen = []
    suite = NllSuite(on_run=lambda ctx: seen.append((ctx.model.training, torch.is_grad_enabled())))
    if how == "attach_eval":
        callback = attach_eval(trainer, [suite], every_n_steps=2, limit=2, eval_on_train_end=False)
    else:
        callback = EmoRegEvalCallback([suite], every_n_steps=2, limit=2, eval_on_train_end=False)
        trainer.add_callback(callback)
    modes_after_eval = []

    class ModeProbe(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            modes_after_eval.append(model.training)

    trainer.add_callback(ModeProbe())
    trainer.train()

    evals = [h for h in trainer.state.log_history if "emoreg_eval/fake_nll/mean_nll" in h]
    assert [h["step"] for h in evals] == [2, 4]
    assert all(h["emoreg_eval/fake_nll/mean_nll/n"] == 4.0 and "loss" in h for h in evals)
    assert evals[0]["emoreg_eval/fake_nll/mean_nll"] != evals[1]["emoreg_eval/fake_nll/mean_nll"]  # weights moved
    assert all("emoreg/desperate/L2/z" in h for h in evals)  # the regulariser's metrics still arrive
    assert seen == [(False, False), (False, False)]  # eval mode, no grad
    assert modes_after_eval == [True] * 4  # train mode restored
    assert [entry["step"] for entry in callback.history] == [2, 4]
    results = json.loads((tmp_path / "run" / "emoreg_eval" / "step-4" / "results.json").read_text())
    assert results["suites"]["fake_nll"]["metrics"]["mean_nll"]["value"] == evals[1]["emoreg_eval/fake_nll/mean_nll"]
    # evaluating changed nothing about training: the same weights as the same run without the eval callback
    without = _trainer(tmp_path / "without", make_tiny_llama())
    attach(without, bundle, REG_CONFIG)
    without.train()
    for (name, p), (_, q) in zip(trainer.model.named_parameters(), without.model.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_regularizer_records_nothing_during_evals(tmp_path, data_files):
    model = make_tiny_llama()
    trainer = _trainer(tmp_path, model, max_steps=2)
    reg_callback = attach(trainer, make_bundle(model), {"emotions": {"desperate": 1.0}, "layers": [2]})
    snapshots = []

    def before_and_after(ctx):
        snapshots.append(reg_callback.regularizer._metrics[2].pending(torch.device("cpu")).clone())

    class Snapshot(NllSuite):
        def run(self, ctx, items):
            before_and_after(ctx)
            yield from super().run(ctx, items)
            before_and_after(ctx)

    attach_eval(trainer, [Snapshot()], every_n_steps=1, limit=2, eval_on_train_end=False)
    trainer.train()
    assert len(snapshots) == 4
    for before, after in zip(snapshots[::2], snapshots[1::2], strict=True):
        torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_default_interval_from_eval_steps_and_train_end(tmp_path, data_files):
    model = make_tiny_llama()
    trainer = _trainer(tmp_path, model, max_steps=3, eval_steps=2)
    callback = EmoRegEvalCallback([NllSuite()], limit=1)
    trainer.add_callback(callback)
    trainer.train()
    steps = [h["step"] for h in trainer.state.log_history if "emoreg_eval/fake_nll/mean_nll" in h]
    assert steps == [2, 3]  # eval_steps=2, then once more at the end of training (step 3)
    assert [entry["step"] for entry in callback.history] == [2, 3]


def test_configuration_errors(tmp_path, data_files):
    with pytest.raises(ConfigError, match="every_n_steps"):
        EmoRegEvalCallback([NllSuite()], every_n_steps=0)
    with pytest.raises(ConfigError, match="did you mean 'capability'"):
        EmoRegEvalCallback("capabilty")
    with pytest.raises(ConfigError, match="no data part"):
        EmoRegEvalCallback([NllSuite()], data={"fake_nll.nope": str(data_files["main"])})
    trainer = _trainer(tmp_path, make_tiny_llama(), max_steps=1)
    trainer.add_callback(EmoRegEvalCallback([NllSuite()]))
    with pytest.raises(ConfigError, match="pass every_n_steps=N or set the trainer's eval_steps"):
        trainer.train()


def test_flatten_metrics():
    results = {"suites": {"probes": {"metrics": {"start_z/calm": {"value": 0.5, "ci": [0, 1], "n": 3}}}}}
    assert flatten_metrics(results, "x/") == {"x/probes/start_z/calm": 0.5, "x/probes/start_z/calm/n": 3.0}
