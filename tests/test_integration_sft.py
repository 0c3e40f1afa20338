"""SFTTrainer + emoreg: exact gradients with gradient accumulation 1 and 4, metrics, lifecycle, resume."""

import json

import pytest
import torch
import transformers
from datasets import Dataset

from emoreg.integrations import EmoRegCallback, attach
from emoreg.models.layout import find_decoder_layers
from tests.regularizer_helpers import make_bundle
from tests.tiny_models import make_tiny_llama, make_tiny_tokenizer
from tests.trainer_harness import SGD_ARGS, assert_penalty_gradient, hand_penalty_gradient, one_step, trainable_state

trl = pytest.importorskip("trl")

RULES = {"desperate": {"weight": 1.0}, "hostile": {"weight": 0.5, "kind": "hinge"}}


def _dataset(n=16):
    texts = [f"story {i}: the build failed again and the deadline is {'tomorrow' * (i % 3 + 1)}" for i in range(n)]
    return Dataset.from_dict({"text": texts})


def _trainer(tmp_path, ga, model, **overrides):
    settings = {**SGD_ARGS, "max_steps": 1, "gradient_checkpointing": False, **overrides}
    args = trl.SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=ga,
                         **settings)
    return trl.SFTTrainer(model=model, args=args, train_dataset=_dataset(), processing_class=make_tiny_tokenizer())


@pytest.mark.parametrize("ga", [1, 4])
@pytest.mark.parametrize("how", ["attach", "callback"])
def test_sft_gradients_are_exact(tmp_path, ga, how):
    config = {"emotions": RULES, "layers": [1, 2], "coef": 0.5}
    base = make_tiny_llama().double()
    vectors = make_bundle(base)
    before = trainable_state(base)

    without, _ = one_step(lambda: _trainer(tmp_path / "a", ga, make_tiny_llama().double()), None)

    def add(trainer):
        if how == "attach":
            attach(trainer, vectors, config)
        else:
            trainer.add_callback(EmoRegCallback(vectors, config))

    with_emoreg, batches = one_step(lambda: _trainer(tmp_path / "b", ga, make_tiny_llama().double()), add)
    assert len(batches) == ga
    expected = hand_penalty_gradient(base, batches, vectors, RULES, [1, 2], 0.5, ga)
    assert_penalty_gradient(before, trainable_state(with_emoreg.model), trainable_state(without.model), expected)


def test_metrics_reach_log_history_and_hooks_are_removed(tmp_path):
    model = make_tiny_llama()
    trainer = _trainer(tmp_path, 2, model, max_steps=2)
    attach(trainer, make_bundle(model), {"emotions": {"desperate": 1.0}, "layers": [2]})
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2
    for entry in logged:
        assert entry["emoreg/coef"] == 0.1
        assert entry["emoreg/L2/tokens"] > 0
        assert "emoreg/desperate/L2/projection" in entry and "emoreg/desperate/L2/penalty" in entry
    assert all(not layer._forward_hooks for layer in find_decoder_layers(model))
    saved = json.loads((tmp_path / "emoreg_config.json").read_text())
    assert saved["config"]["emotions"] == {"desperate": 1.0} and saved["layers"] == [2]


def test_hooks_are_removed_when_training_raises(tmp_path):
    model = make_tiny_llama()
    trainer = _trainer(tmp_path, 1, model, max_steps=3)
    attach(trainer, make_bundle(model), {"emotions": {"desperate": 1.0}, "layers": [2]})

    def explode(*args, **kwargs):
        raise RuntimeError("optimizer blew up")

    trainer.create_optimizer()
    trainer.optimizer.step = explode
    with pytest.raises(RuntimeError, match="optimizer blew up"):
        trainer.train()
    assert all(not layer._forward_hooks for layer in find_decoder_layers(model))


def test_coef_schedule_continues_after_resume(tmp_path):
    config = {"emotions": {"desperate": 1.0}, "layers": [2], "coef": 1.0, "schedule": "linear_decay"}

    class StopAt(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True  # an interruption right after the checkpoint at step 2

    def run(output, stop=False, resume=False):
        model = make_tiny_llama()
        trainer = _trainer(output, 1, model, max_steps=4, save_strategy="steps", save_steps=2)
        attach(trainer, make_bundle(model), config)
        if stop:
            trainer.add_callback(StopAt())
        trainer.train(resume_from_checkpoint=resume or None)
        return [h["emoreg/coef"] for h in trainer.state.log_history if "emoreg/coef" in h]

    full = run(tmp_path / "full")
    run(tmp_path / "part", stop=True)
    resumed = run(tmp_path / "part", resume=True)
    assert full == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert resumed[-2:] == pytest.approx(full[-2:])
    assert (tmp_path / "part" / "checkpoint-2" / "emoreg_state.json").is_file()


def test_attach_metrics_reach_reporters_registered_before_it(tmp_path):
    """A report_to backend is a callback registered before user callbacks; with attach() it sees emoreg/ metrics."""
    seen = []

    class Reporter(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))

    model = make_tiny_llama()
    trainer = _trainer(tmp_path, 1, model, max_steps=2)
    trainer.callback_handler.callbacks.insert(0, Reporter())
    attach(trainer, make_bundle(model), {"emotions": {"desperate": 1.0}, "layers": [2]})
    trainer.train()
    training_logs = [logs for logs in seen if "loss" in logs]
    assert len(training_logs) == 2
    assert all("emoreg/desperate/L2/projection" in logs for logs in training_logs)


def test_fp16_loss_scale_is_read_from_the_scaler():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    class Optimizer:
        pass

    optimizer = Optimizer()
    optimizer.scaler = scaler
    callback = EmoRegCallback(make_bundle(make_tiny_llama()), {"emotions": {"desperate": 1.0}, "layers": [2]})
    callback._optimizer = optimizer
    fp16, fp32 = type("Args", (), {"fp16": True}), type("Args", (), {"fp16": False})
    assert callback._loss_scale(fp16) == 4096.0
    callback._optimizer = None
    assert callback._loss_scale(fp32) == 1.0
    from emoreg.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16 training without a readable GradScaler"):
        callback._loss_scale(fp16)


def test_fp16_with_deepspeed_is_refused():
    from emoreg.errors import ConfigError

    class Args:
        fp16 = True
        deepspeed = "ds_config.json"

    callback = EmoRegCallback(make_bundle(make_tiny_llama()), {"emotions": {"desperate": 1.0}, "layers": [2]})
    with pytest.raises(ConfigError, match="fp16 with DeepSpeed"):
        callback._check_precision(Args())
