"""DPO, GRPO, RLOO, KTO and Reward trainers (TRL) + emoreg: exact gradients, metrics, lifecycle.

The exactness tests follow tests/test_integration_sft.py (see tests/trainer_harness.py): two identical
trainers take one SGD step with lr 1, one of them with emoreg attached; the parameter difference must
equal ``coef * sum_i grad R_i / GA``, computed by hand from the micro-batches the trainer really fed
the model (the recorder keeps only training forwards: training mode and grad enabled).

What each trainer runs through the policy's decoder layers besides its training forwards, and what
the tests check about it:

* DPO: one forward on chosen+rejected (concatenated) per micro-batch, ``labels`` = completion-masked
  ``input_ids`` (``completion_mask`` itself is not passed to the model); a reference forward under
  ``no_grad`` on a separate reference model, or, with PEFT and no reference model, on the *policy
  itself* with the adapter switched (same hooked layers, training mode, grad off).
* GRPO / RLOO: ``generate`` (no_grad) before the step; RLOO also an old-log-prob pass (no_grad).
* KTO: a KL pass on the policy under ``no_grad`` (training mode) before every training forward.
* Reward: a sequence-classification forward without ``labels``.

In every case the logged ``emoreg/L{layer}/tokens`` must equal the non-sink real tokens (completion
tokens for ``selection="completion"``) of the recorded training forwards only, and the tests also
assert that the no-grad passes really went through the hooked model, so the check is not vacuous.

Models are float64 (every trainer here accepts it; see RTOL for why float32 rounding remains) with
SDPA attention: in float64, eager attention computes its softmax in float32, where the float64 mask
minimum becomes ``-inf``, so the fully masked query row of a left-padded prompt is NaN and poisons
the whole sequence (GRPO/RLOO left-pad prompts; ``generate`` then fails with "probability tensor
contains either inf, nan or element < 0").

Timing (2 CPU cores): about 50 s for the file; ``-m "not slow"`` skips RLOO's exactness (~5-10 s).
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from emoreg.errors import ConfigError
from emoreg.integrations import attach
from emoreg.models.layout import find_decoder_layers, unwrap_model
from tests.regularizer_helpers import content_mask, make_bundle
from tests.tiny_models import make_tiny_config, make_tiny_llama, make_tiny_tokenizer
from tests.trainer_harness import (
    SGD_ARGS,
    MicroBatchRecorder,
    assert_penalty_gradient,
    hand_penalty_gradient,
    trainable_state,
)

trl = pytest.importorskip("trl")

RULES = {"desperate": {"weight": 1.0}, "hostile": {"weight": 0.5, "kind": "hinge"}}
LAYERS = [1, 2]
COEF = 0.5
# The models are float64, but LlamaRMSNorm computes in float32 whatever the input dtype, so both runs'
# gradients carry float32 rounding proportional to the *loss* gradient, which is up to ~15x the
# penalty's here (worst difference seen: 1.8e-6 of the largest penalty-gradient entry, RLOO). A
# mis-scaled or missing penalty would be off by O(1) of that entry.
RTOL, ATOL_FRACTION = 1e-5, 1e-5


def _config(selection="all", **overrides):
    return {"emotions": RULES, "layers": LAYERS, "coef": COEF, "selection": selection, **overrides}


# --------------------------------------------------------------------------- models and data


def _policy():
    model = make_tiny_llama().double()
    model.set_attn_implementation("sdpa")
    return model


def _reward_model():
    from transformers import LlamaForSequenceClassification

    config = make_tiny_config("llama")
    config.num_labels = 1
    config.pad_token_id = make_tiny_tokenizer().pad_token_id
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(config)
    return model.double().eval()


def _lora_policy():
    peft = pytest.importorskip("peft")
    LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return get_peft_model(_policy(), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                    lora_dropout=0.0))


def _preference_data(n=8):
    return Dataset.from_dict({
        "prompt": [f"q{i}: why is the build {'red' * (i % 3 + 1)}?" for i in range(n)],
        "chosen": [f" it is fine{'!' * i}" for i in range(n)],
        "rejected": [f" I give up {'?' * (i % 4)}" for i in range(n)],
    })


def _implicit_preference_data(n=8):
    return Dataset.from_dict({
        "chosen": [f"the fix is simple {'ok' * (i % 3)}" for i in range(n)],
        "rejected": [f"nothing works {'!!' * (i % 4 + 1)}" for i in range(n)],
    })


def _unpaired_data(n=8):
    return Dataset.from_dict({
        "prompt": [f"q{i}: status{'?' * (i % 3)}" for i in range(n)],
        "completion": [f" {'calm' if i % 2 else 'hopeless'} {'.' * i}" for i in range(n)],
        "label": [i % 2 == 1 for i in range(n)],
    })


def _prompts(n=8):
    return Dataset.from_dict({"prompt": [f"tell story {i}{' again' * (i % 3)}" for i in range(n)]})


def _reward(completions, **kwargs):
    return [float(len(set(c))) + c.count("e") for c in completions]


def _settings(max_steps, **overrides):
    return {**SGD_ARGS, "max_steps": max_steps, "gradient_checkpointing": False, **overrides}


# One factory per trainer: (output_dir, model, max_steps, ga, **TrainingArguments overrides) -> trainer.
def _dpo(output, model, max_steps=1, ga=2, ref_model="copy", **overrides):
    args = trl.DPOConfig(output_dir=str(output), per_device_train_batch_size=2, gradient_accumulation_steps=ga,
                         **_settings(max_steps, **overrides))
    # Without PEFT, TRL would load the reference from the Hub by the config's name: give it one.
    ref = _policy() if ref_model == "copy" else ref_model
    return trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=_preference_data(),
                          processing_class=make_tiny_tokenizer())


def _grpo(output, model, max_steps=1, ga=2, **overrides):
    args = trl.GRPOConfig(output_dir=str(output), per_device_train_batch_size=4, num_generations=2,
                          max_completion_length=6, gradient_accumulation_steps=ga, beta=0.0,
                          **_settings(max_steps, **overrides))
    return trl.GRPOTrainer(model=model, reward_funcs=_reward, args=args, train_dataset=_prompts(),
                           processing_class=make_tiny_tokenizer())


def _rloo(output, model, max_steps=1, ga=2, **overrides):
    args = trl.RLOOConfig(output_dir=str(output), per_device_train_batch_size=4, num_generations=2,
                          max_completion_length=6, gradient_accumulation_steps=ga, beta=0.0,
                          **_settings(max_steps, **overrides))
    return trl.RLOOTrainer(model=model, reward_funcs=_reward, args=args, train_dataset=_prompts(),
                           processing_class=make_tiny_tokenizer())


def _kto(output, model, max_steps=1, ga=2, **overrides):
    args = trl.KTOConfig(output_dir=str(output), per_device_train_batch_size=2, gradient_accumulation_steps=ga,
                         **_settings(max_steps, **overrides))
    return trl.KTOTrainer(model=model, ref_model=_policy(), args=args, train_dataset=_unpaired_data(),
                          processing_class=make_tiny_tokenizer())


def _reward_trainer(output, model, max_steps=1, ga=2, **overrides):
    args = trl.RewardConfig(output_dir=str(output), per_device_train_batch_size=2, gradient_accumulation_steps=ga,
                            **_settings(max_steps, **overrides))
    return trl.RewardTrainer(model=model, args=args, train_dataset=_implicit_preference_data(),
                             processing_class=make_tiny_tokenizer())


# --------------------------------------------------------------------------- running and checking


def _emoreg_hooks(model):
    """Hooks owned by emoreg anywhere in ``model`` (the trainer adds its own, e.g. for gradient checkpointing)."""
    return [(name, fn) for name, module in model.named_modules()
            for fn in (*module._forward_hooks.values(), *module._forward_pre_hooks.values())
            if (getattr(fn, "__module__", None) or "").startswith("emoreg")]


def _assert_detached(model):
    base = unwrap_model(model)
    assert _emoreg_hooks(model) == [], "emoreg left hooks behind"
    assert "generate" not in base.__dict__ and not hasattr(base, "_emoreg_regularizer")


class Run:
    """A finished training run: the trainer, its training micro-batches and its no-grad policy forwards."""

    def __init__(self, trainer, batches, no_grad_forwards):
        self.trainer, self.batches, self.no_grad_forwards = trainer, batches, no_grad_forwards

    def logged(self):
        return [h for h in self.trainer.state.log_history if "loss" in h]


def _train(trainer, vectors=None, config=None) -> Run:
    """Optionally attach emoreg, train with a micro-batch recorder, and check emoreg left nothing behind."""
    if vectors is not None:
        attach(trainer, vectors, config)
    base = unwrap_model(trainer.model)
    recorder = MicroBatchRecorder(trainer.model)
    no_grad = []
    handle = base.register_forward_pre_hook(
        lambda module, args, kwargs: no_grad.append(module.training) if not torch.is_grad_enabled() else None,
        with_kwargs=True)
    try:
        trainer.train()
    finally:
        recorder.remove()
        handle.remove()
    _assert_detached(trainer.model)
    return Run(trainer, recorder.batches, no_grad)


def _selected_tokens(batches, selection="all"):
    """Non-sink real tokens (completion tokens too for ``completion``) of ``batches``: what emoreg must count."""
    total = 0
    for batch in batches:
        mask = content_mask(batch["attention_mask"])
        if selection == "completion":
            mask = mask & (batch["labels"] != -100)
        total += int(mask.sum())
    return total


def _assert_tokens_logged(run, ga, selection="all"):
    """Each logged step counts exactly the selected tokens of its own ``ga`` training micro-batches."""
    logged = run.logged()
    assert len(run.batches) == ga * len(logged)
    for step, entry in enumerate(logged):
        expected = _selected_tokens(run.batches[step * ga:(step + 1) * ga], selection)
        assert expected > 0
        for layer in LAYERS:
            assert entry[f"emoreg/L{layer}/tokens"] == expected, (step, layer, entry)
        assert entry["emoreg/coef"] == COEF
        assert "emoreg/desperate/L1/penalty" in entry and "emoreg/hostile/L2/projection" in entry


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), f"the two runs fed different {key}"


def _assert_exact(make, tmp_path, build, ga, selection="all", micro=None, **overrides):
    """One SGD step with and without emoreg; their difference is the hand-computed penalty gradient.

    ``ga`` is the configured accumulation, ``micro`` the micro-batches the step really has (fewer in a
    short last window; default ``ga``): the penalty is divided by ``micro``, as the trainer divides its
    loss. ``overrides`` go to the trainer's config. Returns the emoreg run.
    """
    micro = ga if micro is None else micro
    max_steps = overrides.pop("max_steps", 1)
    base = build()
    vectors = make_bundle(unwrap_model(base))
    before = trainable_state(base)
    plain = _train(make(tmp_path / "plain", build(), max_steps, ga, **overrides))
    emo = _train(make(tmp_path / "emoreg", build(), max_steps, ga, **overrides), vectors, _config(selection))
    assert len(emo.batches) == micro and emo.trainer.state.global_step == 1
    _assert_same_batches(plain.batches, emo.batches)
    expected = hand_penalty_gradient(base, emo.batches, vectors, RULES, LAYERS, COEF, micro, selection=selection)
    assert_penalty_gradient(before, trainable_state(emo.trainer.model), trainable_state(plain.trainer.model),
                            expected, rtol=RTOL, atol_fraction=ATOL_FRACTION)
    _assert_tokens_logged(emo, micro, selection)
    assert not any("emoreg/coef" in h for h in plain.trainer.state.log_history)
    return emo


# --------------------------------------------------------------------------- DPO


# TRL turns gradient checkpointing on by default (non-reentrant on transformers 5): one case of each uses it.
SELECTION_AND_CHECKPOINTING = [("all", False), ("completion", True)]


@pytest.mark.parametrize(("selection", "checkpointing"), SELECTION_AND_CHECKPOINTING)
def test_dpo_gradients_are_exact(tmp_path, selection, checkpointing):
    """DPO: chosen+rejected in one forward; ``completion`` selects labels != -100 (completion-masked input_ids).

    The reference forwards run on a separate model under no_grad: they are not recorded (grad off) and,
    through the token count, add no metric; the exact gradient shows they add no penalty either.
    """
    emo = _assert_exact(_dpo, tmp_path, _policy, ga=2, selection=selection, gradient_checkpointing=checkpointing)
    assert unwrap_model(emo.trainer.model).is_activation_checkpointing == checkpointing
    batch = emo.batches[0]
    assert batch["input_ids"].shape[0] == 4  # 2 pairs: chosen + rejected concatenated in one forward
    assert (batch["labels"] != -100).sum() < content_mask(batch["attention_mask"]).sum()  # prompts are excluded
    assert emo.no_grad_forwards == []  # the reference ran on its own model, never through the hooked policy


def test_dpo_peft_reference_pass_through_the_policy_adds_nothing(tmp_path):
    """PEFT without a reference model: the reference forward runs the *hooked policy* under no_grad.

    Exact gradient on the LoRA parameters and token counts of the training forwards only, while the
    policy saw one no-grad (training-mode) reference forward per micro-batch.
    """
    emo = _assert_exact(lambda out, model, steps, ga: _dpo(out, model, steps, ga, ref_model=None), tmp_path,
                        _lora_policy, ga=2, selection="completion")
    assert emo.no_grad_forwards == [True, True]
    assert all("lora" in name for name in trainable_state(emo.trainer.model))


# --------------------------------------------------------------------------- GRPO


@pytest.mark.parametrize(("selection", "checkpointing"), SELECTION_AND_CHECKPOINTING)
def test_grpo_gradients_are_exact(tmp_path, selection, checkpointing):
    """GRPO (beta 0, 4 prompts x 2 generations per step, GA 2, generation under no_grad first).

    Design: the trainers seed the global RNG when they are built (``seed=0``), nothing between
    construction and ``train()`` draws from it, and emoreg neither edits generation
    (``during_generation`` is off) nor draws random numbers, so both runs must sample the same
    completions. The test *asserts* that the two runs fed identical micro-batches (input_ids,
    attention_mask, labels, after TRL's shuffle and split); the "without" run is then a valid
    baseline on exactly those completions, the advantages (deterministic functions of them) agree,
    and the hand gradient is computed from the emoreg run's own recorded micro-batches. If emoreg ever
    perturbed rollouts, that assertion, not a tolerance, fails: emoreg must not change sampling.
    (A third run replaying the emoreg run's completions would be needed only if sampling were not
    reproducible; it is, so the simpler design is sound.)

    GRPO divides its loss by GA itself (``loss_is_scaled_for_ga=True``); emoreg scales by 1/GA too.
    Generation forwards go through the hooked layers under no_grad: none is recorded, and the
    token count shows they add no metric.
    """
    emo = _assert_exact(_grpo, tmp_path, _policy, ga=2, selection=selection, gradient_checkpointing=checkpointing)
    assert unwrap_model(emo.trainer.model).is_activation_checkpointing == checkpointing
    assert emo.trainer.loss_is_scaled_for_ga is True
    assert emo.no_grad_forwards, "generation should have run through the hooked policy"
    mask = emo.batches[0]["attention_mask"]
    assert (mask[:, 0] == 0).any(), "prompts should be left-padded (sink tokens then sit after the padding)"
    labels = emo.batches[0]["labels"]
    assert ((labels != -100).sum(-1) <= 6).all() and (labels[:, :-6] == -100).all()


# --------------------------------------------------------------------------- RLOO, KTO, Reward


TRAINERS = {"rloo": (_rloo, _policy, 2), "kto": (_kto, _policy, 1), "reward": (_reward_trainer, _reward_model, 1)}


@pytest.mark.parametrize("name", list(TRAINERS))
def test_two_steps_log_metrics_of_training_forwards_only(tmp_path, name):
    """Two steps with attach(): emoreg/ metrics in log_history, counting only the training forwards."""
    make, build, ga = TRAINERS[name]
    model = build()
    run = _train(make(tmp_path, model, 2, ga), make_bundle(model), _config())
    assert len(run.logged()) == 2
    _assert_tokens_logged(run, ga)
    assert all(not layer._forward_hooks for layer in find_decoder_layers(model))
    if name == "kto":
        assert run.no_grad_forwards == [True, True]  # the KL pass ran through the hooked policy, once a step
    elif name == "rloo":
        assert len(run.no_grad_forwards) > 2  # generation and the old-log-prob pass
    else:
        assert run.no_grad_forwards == []


@pytest.mark.parametrize("name", ["reward", pytest.param("rloo", marks=pytest.mark.slow)])
def test_gradients_are_exact(tmp_path, name):
    """Bonus: the same one-step exactness check (GA 2) for Reward and RLOO (generation + old log-probs)."""
    make, build, _ = TRAINERS[name]
    _assert_exact(make, tmp_path, build, ga=2)


def test_kto_gradients_are_exact_in_a_short_accumulation_window(tmp_path):
    """Bonus: KTO (a KL pass under no_grad before each training forward) with GA 5 but only 4 micro-batches.

    The trainer divides the loss by the 4 micro-batches the window really has
    (``current_gradient_accumulation_steps``); emoreg must divide the penalty by 4 as well, not by 5.
    """
    emo = _assert_exact(_kto, tmp_path, _policy, ga=5, micro=4, max_steps=-1, num_train_epochs=1)
    assert emo.trainer.current_gradient_accumulation_steps == 4
    assert emo.no_grad_forwards == [True] * 4


def test_reward_trainer_rejects_completion_selection(tmp_path):
    """RewardTrainer's forward gets no labels: selection='completion' is a ConfigError, and hooks are removed."""
    model = _reward_model()
    before = trainable_state(model)
    trainer = _reward_trainer(tmp_path, model, 2, 1)
    attach(trainer, make_bundle(model), _config("completion"))
    with pytest.raises(ConfigError, match=r"selection 'completion' needs the completion tokens.*no `labels`"):
        trainer.train()
    assert trainer.state.global_step == 0
    _assert_detached(model)
    for name, value in trainable_state(model).items():
        assert torch.equal(value, before[name]), name


def test_builders_give_identical_independent_models():
    """The exactness tests build each model three times: the copies must be equal and share nothing."""
    for build in (_policy, _reward_model, _lora_policy):
        a, b = build(), build()
        assert all(torch.equal(x, y) and x.data_ptr() != y.data_ptr()
                   for x, y in zip(a.parameters(), b.parameters(), strict=True))
