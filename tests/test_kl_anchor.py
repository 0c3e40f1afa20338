"""The KL anchor (emoreg.regularization.kl_anchor + emoreg.integrations.kl_anchor): exact gradients, lifecycle, errors.

Exactness follows tests/trainer_harness.py: two identical trainers take one SGD step (lr 1, no clipping) with
gradient accumulation 2, one with the anchor attached; their parameters must differ by exactly
``coef * sum_i grad KL_i / G`` (G = 2 micro-batches), computed here by hand (full logits, ``F.kl_div``) from the
anchor batches the run used. The gradient of a KL vanishes where model == reference, so in those tests the
trained model is moved away from the reference first (weights perturbed after the reference was copied, or
LoRA adapters with random non-zero ``B``). SFT covers the trainer deriving ``loss_is_scaled_for_ga`` (true:
the term is divided by G), DPO ``loss_is_scaled_for_ga = False`` (the trainer divides), GRPO ``True``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import transformers
from datasets import Dataset

from emoreg.errors import ConfigError, DataFormatError
from emoreg.integrations import attach, attach_kl_anchor
from emoreg.integrations.kl_anchor import STATE_FILE, accumulation_divisor, check_supported
from emoreg.regularization.anchor_examples import builtin_examples_path, load_anchor_examples
from emoreg.regularization.kl_anchor import METRIC, KLAnchor, KLAnchorConfig, frozen_copy, token_kl
from tests.regularizer_helpers import make_bundle
from tests.tiny_models import make_tiny_llama, make_tiny_tokenizer
from tests.trainer_harness import SGD_ARGS, assert_penalty_gradient, trainable_state

trl = pytest.importorskip("trl")

COEF = 0.5
GA = 2
# float64 models, but LlamaRMSNorm computes in float32, and the parameter difference of two trained states
# carries the float32 rounding of the (larger) task-loss gradient; a missing or mis-scaled term is off by O(1).
RTOL, ATOL_FRACTION = 1e-5, 1e-5

ANCHOR_ROWS = [
    {"messages": [{"role": "user", "content": "how do tides work?"},
                  {"role": "assistant", "content": "the moon pulls on the sea"}]},
    {"text": "a quiet walk along the river at dawn"},
    {"id": "x", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "name a prime"},
                             {"role": "assistant", "content": "seven"}]},
    {"messages": [{"role": "user", "content": "what is a comet?"}]},  # the reference writes the reply
    {"text": "rain again, so the picnic moved indoors"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def anchor_config(tmp_path: Path, **overrides) -> dict:
    path = write_jsonl(tmp_path / "anchor.jsonl", ANCHOR_ROWS)
    return {"coef": COEF, "examples": str(path), "batch_size": 2, "max_length": 96, "max_new_tokens": 6,
            **overrides}


# --------------------------------------------------------------------------- models and trainers


def _policy(attention="eager"):
    model = make_tiny_llama().double()
    model.set_attn_implementation(attention)
    return model


def _perturbed(model, seed=1, scale=0.05):
    """A copy of ``model`` with every weight moved by seeded noise (so that it differs from its reference)."""
    moved = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in moved.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return moved


def _lora(model):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0,
                             init_lora_weights=False)  # random B: the adapter changes the model from the start
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return peft.get_peft_model(model, config)


def _settings(max_steps=1, **overrides):
    return {**SGD_ARGS, "max_steps": max_steps, "activation_checkpointing": False, **overrides}


def _sft(output, model, ga=GA, max_steps=1, eval_dataset=None, **overrides):
    texts = [f"story {i}: the build failed again and the deadline is {'tomorrow' * (i % 3 + 1)}" for i in range(16)]
    args = trl.SFTConfig(output_dir=str(output), per_device_train_batch_size=2, gradient_accumulation_steps=ga,
                         **_settings(max_steps, **overrides))
    return trl.SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}),
                          eval_dataset=eval_dataset, processing_class=make_tiny_tokenizer())


def _dpo(output, model, ga=GA):
    data = Dataset.from_dict({"prompt": [f"q{i}: why is the build {'red' * (i % 3 + 1)}?" for i in range(8)],
                              "chosen": [f" it is fine{'!' * i}" for i in range(8)],
                              "rejected": [f" I give up {'?' * (i % 4)}" for i in range(8)]})
    args = trl.DPOConfig(output_dir=str(output), per_device_train_batch_size=2, gradient_accumulation_steps=ga,
                         **_settings())
    return trl.DPOTrainer(model=model, ref_model=_policy(), args=args, train_dataset=data,
                          processing_class=make_tiny_tokenizer())


def _grpo(output, model, ga=GA):
    def reward(completions, **kwargs):
        return [float(len(set(c))) + c.count("e") for c in completions]

    data = Dataset.from_dict({"prompt": [f"tell story {i}{' again' * (i % 3)}" for i in range(8)]})
    args = trl.GRPOConfig(output_dir=str(output), per_device_train_batch_size=4, num_generations=2,
                          max_completion_length=6, gradient_accumulation_steps=ga, beta=0.0, **_settings())
    return trl.GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                           processing_class=make_tiny_tokenizer())


# --------------------------------------------------------------------------- the KL by hand


def hand_kl(model, reference, batch, direction="forward"):
    """Token-mean KL of ``batch`` from full logits (``reference=None``: ``model`` with its adapter disabled)."""
    with torch.no_grad():
        if reference is None:
            with model.disable_adapter():
                reference_logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        else:
            reference_logits = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    log_model, log_reference = F.log_softmax(logits, -1), F.log_softmax(reference_logits, -1)
    if direction == "forward":
        per_token = F.kl_div(log_model, log_reference, log_target=True, reduction="none").sum(-1)
    else:
        per_token = F.kl_div(log_reference, log_model, log_target=True, reduction="none").sum(-1)
    return per_token[batch.positions].mean()


def hand_kl_gradient(start, reference, batches, coef=COEF, ga=GA):
    """``coef * sum_i grad KL_i / ga`` at the parameters of ``start`` (a copy is used)."""
    model = copy.deepcopy(start).train()
    model.zero_grad()
    for batch in batches:
        (coef * hand_kl(model, reference, batch) / ga).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _run_exact(tmp_path, make_trainer, reference, start, config):
    """Train ``start`` once without and once with the anchor (reference: ``reference``); check the difference."""
    before = trainable_state(start)
    without = make_trainer(tmp_path / "without", copy.deepcopy(start))
    without.train()
    trainer = make_trainer(tmp_path / "with", copy.deepcopy(reference if reference is not None else start))
    callback = attach_kl_anchor(trainer, config)
    if reference is not None:  # the reference was copied from `reference`; now train from `start`
        trainer.model.load_state_dict(start.state_dict())
    trainer.train()
    anchor = callback.anchor
    assert anchor.calls == GA
    batches = [anchor.batch(i) for i in range(GA)]
    expected = hand_kl_gradient(start, reference, batches)
    assert_penalty_gradient(before, trainable_state(trainer.model), trainable_state(without.model), expected,
                            rtol=RTOL, atol_fraction=ATOL_FRACTION)
    logged = [h[METRIC] for h in trainer.state.log_history if METRIC in h]
    hand = [float(hand_kl(copy.deepcopy(start), reference, batch).detach()) for batch in batches]
    assert logged == pytest.approx([sum(hand) / GA], rel=1e-6)
    return trainer


# --------------------------------------------------------------------------- exact gradients


@pytest.mark.parametrize("checkpointing", [False, True])
def test_sft_gradient_is_exact_with_gradient_accumulation(tmp_path, checkpointing):
    base = _policy()

    def make(output, model):
        return _sft(output, model, activation_checkpointing=checkpointing)

    trainer = _run_exact(tmp_path, make, base, _perturbed(base), anchor_config(tmp_path))
    assert trainer.model.is_activation_checkpointing is checkpointing
    assert accumulation_divisor(trainer, num_items_in_batch=torch.tensor(10)) == GA  # the term was divided by G


def test_sft_lora_gradient_is_exact_against_the_adapter_disabled_model(tmp_path):
    start = _lora(_policy())
    trainer = _run_exact(tmp_path, _sft, None, start, anchor_config(tmp_path))
    assert trainer.model.peft_config and "lora" in next(iter(trainable_state(trainer.model)))


def test_dpo_gradient_is_exact_when_the_trainer_divides_the_loss(tmp_path):
    base = _policy()
    trainer = _run_exact(tmp_path, _dpo, base, _perturbed(base), anchor_config(tmp_path))
    assert trainer.loss_is_scaled_for_ga is False and accumulation_divisor(trainer, None) == 1


def test_grpo_gradient_is_exact(tmp_path):
    base = _policy("sdpa")  # GRPO left-pads prompts: eager float64 attention gives NaN rows (see test_integration_trl)
    trainer = _run_exact(tmp_path, _grpo, base, _perturbed(base), anchor_config(tmp_path))
    assert trainer.loss_is_scaled_for_ga is True and accumulation_divisor(trainer, None) == GA


# --------------------------------------------------------------------------- behaviour during training


def test_kl_is_zero_at_the_start_grows_with_training_and_the_reference_stays_frozen(tmp_path):
    trainer = _sft(tmp_path, make_tiny_llama(), ga=1, max_steps=4, learning_rate=0.5)
    callback = attach_kl_anchor(trainer, anchor_config(tmp_path))
    anchor = callback.anchor
    reference = {n: p.detach().clone() for n, p in anchor.reference.named_parameters()}
    assert all(not p.requires_grad for p in anchor.reference.parameters()) and not anchor.reference.training
    assert {p.data_ptr() for p in anchor.reference.parameters()}.isdisjoint(
        p.data_ptr() for p in trainer.model.parameters())
    anchor.prepare(trainer.model)
    for index in range(6):  # every anchor batch, several passes: reference == model, so KL == 0 exactly
        assert float(anchor.kl(anchor.batch(index)).detach()) == 0.0
    trainer.train()
    kl = [h[METRIC] for h in trainer.state.log_history if "loss" in h]
    assert len(kl) == 4 and kl[0] == 0.0 and kl[-1] > kl[1] > 1e-6
    assert all(torch.equal(p, reference[n]) for n, p in anchor.reference.named_parameters())
    assert anchor.calls == 4


def test_wrappers_are_removed_after_training_and_emoreg_wrappers_are_kept(tmp_path):
    model = make_tiny_llama()
    trainer = _sft(tmp_path, model, ga=1, max_steps=1)
    attach(trainer, make_bundle(model), {"emotions": {"desperate": 1.0}, "layers": [2]})
    emoreg_log = trainer.__dict__["log"]
    callback = attach_kl_anchor(trainer, anchor_config(tmp_path))
    trainer.train()
    assert not callback.installed and "compute_loss" not in trainer.__dict__
    assert trainer.__dict__["log"] is emoreg_log
    assert any(METRIC in h for h in trainer.state.log_history)


def test_wrappers_are_removed_when_training_raises(tmp_path):
    trainer = _sft(tmp_path, make_tiny_llama(), ga=1, max_steps=3)
    callback = attach_kl_anchor(trainer, anchor_config(tmp_path))
    seen = []

    def explode(*args, **kwargs):
        seen.append(callback.installed and "compute_loss" in trainer.__dict__)
        raise RuntimeError("optimizer blew up")

    trainer.create_optimizer()
    trainer.optimizer.step = explode
    with pytest.raises(RuntimeError, match="optimizer blew up"):
        trainer.train()
    assert seen == [True]  # installed while training ran
    assert not callback.installed and "compute_loss" not in trainer.__dict__ and "log" not in trainer.__dict__


def test_evaluation_passes_take_no_anchor_term(tmp_path):
    eval_data = Dataset.from_dict({"text": ["an evaluation text about the weather"] * 4})
    trainer = _sft(tmp_path, make_tiny_llama(), ga=2, max_steps=2, eval_dataset=eval_data, eval_strategy="steps",
                   eval_steps=1)
    callback = attach_kl_anchor(trainer, anchor_config(tmp_path))
    trainer.train()
    assert any("eval_loss" in h for h in trainer.state.log_history)
    assert callback.anchor.calls == 2 * 2  # the training micro-batches only


def test_an_emoreg_regularizer_does_not_see_the_anchor_forwards(tmp_path):
    """Steering edits training forwards; the anchor's must stay unedited (KL 0 at the start) and uncounted."""
    steer = {"emotions": {"desperate": {"mode": "steer", "steer_coef": 8.0}}, "layers": [2]}

    def run(output, with_anchor):
        model = make_tiny_llama()
        trainer = _sft(output, model, ga=1, max_steps=1)
        attach(trainer, make_bundle(model), steer)
        if with_anchor:
            attach_kl_anchor(trainer, anchor_config(tmp_path))
        trainer.train()
        return next(h for h in trainer.state.log_history if "loss" in h)

    alone, both = run(tmp_path / "alone", False), run(tmp_path / "both", True)
    assert both[METRIC] == 0.0
    assert both["emoreg/L2/tokens"] == alone["emoreg/L2/tokens"] > 0


def test_resumed_run_takes_the_same_anchor_batches(tmp_path):
    class StopAt(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True

    config = anchor_config(tmp_path)

    def run(output, stop=False, resume=False):
        trainer = _sft(output, make_tiny_llama(), ga=1, max_steps=4, learning_rate=0.5, save_strategy="steps",
                       save_steps=2)
        callback = attach_kl_anchor(trainer, config)
        if stop:
            trainer.add_callback(StopAt())
        trainer.train(resume_from_checkpoint=resume or None)
        return callback.anchor.calls, [h[METRIC] for h in trainer.state.log_history if METRIC in h]

    full_calls, full = run(tmp_path / "full")
    run(tmp_path / "part", stop=True)
    assert json.loads((tmp_path / "part" / "checkpoint-2" / STATE_FILE).read_text())["anchor"] == {"calls": 2}
    resumed_calls, resumed = run(tmp_path / "part", resume=True)
    assert resumed_calls == full_calls == 4
    assert resumed[-2:] == pytest.approx(full[-2:], rel=1e-5) and full[-1] > 0  # history: restored + new steps


# --------------------------------------------------------------------------- pieces


def test_reply_and_text_tokens_are_the_ones_scored(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]},
            {"text": "plain words"},
            {"text": "a text longer than max_length allows for sure"}]
    tokenizer = make_tiny_tokenizer()
    anchor = KLAnchor(make_tiny_llama(), tokenizer, {"coef": 1.0, "examples": str(write_jsonl(
        tmp_path / "rows.jsonl", rows)), "batch_size": 3, "max_length": 40})
    anchor.prepare()
    batch = anchor.batch(0)
    order = anchor.example_indices(0)
    for row, index in enumerate(order):
        ids, positions = batch.input_ids[row], batch.positions[row]
        scored = ids[1:][positions[:-1]]  # the tokens predicted at the scored positions
        real = int(batch.attention_mask[row].sum())
        if index == 0:
            assert tokenizer.decode(scored) == "hello there"
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                   add_generation_prompt=True)
            assert tokenizer.decode(ids[:real - len(scored)]) == prompt
        else:
            assert positions[:real - 1].all() and not positions[real - 1:].any()
            assert tokenizer.decode(ids[:real]) == (rows[index]["text"] if index == 1 else rows[2]["text"][:40])


def test_anchor_stream_is_seeded_covers_every_example_and_splits_ranks(tmp_path):
    examples = [{"text": f"text number {i}"} for i in range(5)]
    config = {"coef": 1.0, "examples": str(write_jsonl(tmp_path / "rows.jsonl", examples)), "batch_size": 2}
    one, two = (KLAnchor(make_tiny_llama(), make_tiny_tokenizer(), config) for _ in range(2))
    stream = [i for b in range(5) for i in one.example_indices(b)]  # two passes over 5 examples
    assert sorted(stream[:5]) == sorted(stream[5:]) == list(range(5)) and stream[:5] != stream[5:]
    assert stream == [i for b in range(5) for i in two.example_indices(b)]
    one.rank, one.world_size = 1, 2
    assert [one.next_batch_index()] == [1] and (setattr(one, "calls", 3) or one.next_batch_index()) == 7
    other = KLAnchor(make_tiny_llama(), make_tiny_tokenizer(), {**config, "seed": 1})
    assert [i for b in range(5) for i in other.example_indices(b)] != stream


def test_builtin_examples_are_the_heldout_requests_and_need_replies():
    examples = load_anchor_examples(builtin_examples_path())
    assert builtin_examples_path().name == "heldout_requests.jsonl" and len(examples) == 60
    assert all(e.needs_reply and e.context[-1]["role"] == "user" for e in examples)
    assert KLAnchorConfig(coef=0.1, examples="builtin").examples_path == builtin_examples_path()


def test_reference_replies_are_written_once_with_the_reference(tmp_path):
    model = make_tiny_llama()
    anchor = KLAnchor(model, make_tiny_tokenizer(), anchor_config(tmp_path, max_new_tokens=4))
    with torch.no_grad():
        for parameter in model.parameters():  # the policy moves; replies must come from the reference
            parameter.zero_()
    anchor.prepare(model)
    comet = next(e for e in anchor.examples if e.context and e.context[-1]["content"] == "what is a comet?")
    from emoreg.models.generation import ReplyGenerationConfig, generate_replies

    expected = generate_replies(anchor.reference, make_tiny_tokenizer(), [list(comet.context)],
                                ReplyGenerationConfig(max_new_tokens=4))
    assert comet.reply == expected[0] and comet.reply.strip()


def test_copy_ignores_trl_fused_forward_of_the_original():
    """TRL's fused LM head closes over the original model's forward; the reference must not run it."""
    from trl.trainer.utils import add_fused_lm_head

    model = make_tiny_llama()
    add_fused_lm_head(model)
    reference = frozen_copy(model)
    ids = torch.tensor([[1, 40, 41, 42]])
    before = reference(input_ids=ids).logits.clone()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    assert torch.equal(reference(input_ids=ids).logits, before)


def test_token_kl_directions_and_zero_probabilities():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [float("-inf"), 0.0, 0.0]]])
    reference = torch.tensor([[[2.0, 1.0, 0.0], [float("-inf"), 1.0, 0.0]]])
    positions = torch.tensor([[True, True]])
    p, q = reference.softmax(-1), logits.softmax(-1)
    forward = torch.nansum(p * (p.log() - q.log()), -1).mean()
    reverse = torch.nansum(q * (q.log() - p.log()), -1).mean()
    assert float(token_kl(logits, reference, positions)) == pytest.approx(float(forward))
    assert float(token_kl(logits, reference, positions, "reverse")) == pytest.approx(float(reverse))
    assert float(token_kl(logits, logits, positions)) == 0.0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("data", "message"), [
    ({"coeff": 0.1, "examples": "builtin"}, r"kl_anchor: unknown key\(s\) 'coeff' \(did you mean 'coef'\?\)"),
    ({"coef": 0.1}, r"kl_anchor: missing required key\(s\) \['examples'\]"),
    ({"coef": 0, "examples": "builtin"}, r"kl_anchor\.coef must be a positive number .*got 0"),
    ({"coef": -1.0, "examples": "builtin"}, r"kl_anchor\.coef must be a positive number .*got -1\.0"),
    ({"coef": True, "examples": "builtin"}, r"kl_anchor\.coef must be a positive number .*got True"),
    ({"coef": 0.1, "examples": "/nowhere/anchor.jsonl"}, r"kl_anchor\.examples: /nowhere/anchor\.jsonl is not a file"),
    ({"coef": 0.1, "examples": "builtin", "batch_size": 0}, r"kl_anchor\.batch_size must be an integer >= 1, got 0"),
    ({"coef": 0.1, "examples": "builtin", "max_length": 1}, r"kl_anchor\.max_length must be an integer >= 2"),
    ({"coef": 0.1, "examples": "builtin", "direction": "foward"}, r"got 'foward' \(did you mean 'forward'\?\)"),
    ({"coef": 0.1, "examples": "builtin", "complete_with_base": "yes"}, r"complete_with_base must be true or false"),
])
def test_config_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        KLAnchorConfig.from_dict(data)


@pytest.mark.parametrize(("rows", "message"), [
    ([{"text": "ok"}, {"messages": [{"role": "robot", "content": "x"}]}],
     r"rows\.jsonl, line 2, field 'messages\[0\]': expected \{role: one of"),
    ([{"id": 1}], r"rows\.jsonl, line 1: an anchor row needs exactly one of 'messages' .* got fields \['id'\]"),
    ([{"text": "a", "messages": []}], r"line 1: an anchor row needs exactly one of"),
    ([{"text": "fine"}, "{not json"], r"rows\.jsonl, line 2: not valid JSON"),
    ([{"text": "  "}], r"line 1, field 'text': expected a non-empty string"),
    ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}],
     r"line 1, field 'messages\[1\]': the assistant reply is empty"),
    ([{"messages": [{"role": "system", "content": "s"}]}], r"line 1, field 'messages': the chat ends with a system"),
    ([], r"rows\.jsonl: no anchor examples"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataFormatError, match=message):
        load_anchor_examples(path)


def test_user_turn_without_completion_and_too_long_chats_are_errors(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"messages": [{"role": "user", "content": "q " * 30}]}])
    with pytest.raises(DataFormatError, match=r"line 1, field 'messages': the chat ends with a user turn and "
                                              r"kl_anchor\.complete_with_base is off"):
        load_anchor_examples(path, complete_with_base=False)
    anchor = KLAnchor(make_tiny_llama(), make_tiny_tokenizer(), {"coef": 1.0, "examples": str(path),
                                                                 "max_length": 16})
    with pytest.raises(DataFormatError, match=r"line 1, field 'messages': the rendered chat has \d+ tokens before "
                                              r"the reply, and kl_anchor\.max_length is 16"):
        anchor.prepare()


def test_zero3_fsdp_and_prompt_learning_are_refused(tmp_path):
    config = anchor_config(tmp_path)
    zero3 = SimpleNamespace(accelerator=SimpleNamespace(state=SimpleNamespace(
        deepspeed_plugin=SimpleNamespace(zero_stage=3))))
    with pytest.raises(ConfigError, match=r"does not support DeepSpeed ZeRO-3: .*PEFT under ZeRO-3 is untested"):
        check_supported(zero3)
    with pytest.raises(ConfigError, match="does not support FSDP"):
        check_supported(SimpleNamespace(is_fsdp_enabled=True))
    model = make_tiny_llama()
    next(model.parameters()).ds_id = 0  # what a ZeRO-3 partitioned parameter carries
    with pytest.raises(ConfigError, match="partitioned by DeepSpeed ZeRO-3"):
        KLAnchor(model, make_tiny_tokenizer(), config)
    peft = pytest.importorskip("peft")
    prompt_tuned = peft.get_peft_model(make_tiny_llama(), peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                                  num_virtual_tokens=2))
    with pytest.raises(ConfigError, match="PEFT PROMPT_TUNING adapters are not supported"):
        KLAnchor(prompt_tuned, make_tiny_tokenizer(), config)


def test_anchor_refuses_another_model(tmp_path):
    anchor = KLAnchor(make_tiny_llama(), make_tiny_tokenizer(), anchor_config(tmp_path)).prepare()
    with pytest.raises(ConfigError, match="called with a different model"):
        anchor.loss(make_tiny_llama())


# --------------------------------------------------------------------------- recipes


def test_recipe_block_loads_records_defaults_and_rejects_typos(tmp_path):
    from emoreg.train.recipe import recipe_from_dict
    from tests.test_train_run import tiny_recipe

    data = tiny_recipe(tmp_path, "sft", assets={"model": "unused", "bundle": "unused"})
    assert recipe_from_dict(data).kl_anchor is None and recipe_from_dict(data).to_dict()["kl_anchor"] is None
    data["kl_anchor"] = {"coef": 0.1, "examples": "builtin"}
    recipe = recipe_from_dict(data, overrides=["kl_anchor.batch_size=2"])
    assert recipe.kl_anchor_config() == KLAnchorConfig(coef=0.1, examples="builtin", batch_size=2)
    assert recipe.to_dict()["kl_anchor"] == {"coef": 0.1, "examples": "builtin", "batch_size": 2, "max_length": 256,
                                             "complete_with_base": True, "max_new_tokens": 64,
                                             "direction": "forward", "seed": 0}
    with pytest.raises(ConfigError, match=r"recipe: unknown key 'kl_anchor\.coeff' \(did you mean "
                                          r"'kl_anchor\.coef'\?\)"):
        recipe_from_dict({**data, "kl_anchor": {"coeff": 0.1, "examples": "builtin"}})
    with pytest.raises(ConfigError, match=r"override: unknown key 'kl_anchor\.batchsize'"):
        recipe_from_dict(data, overrides=["kl_anchor.batchsize=2"])
    with pytest.raises(ConfigError, match=r"override: kl_anchor\.coef must be a positive number"):
        recipe_from_dict(data, overrides=["kl_anchor.coef=0"])
    with pytest.raises(ConfigError, match=r"recipe: kl_anchor\.examples: missing\.jsonl is not a file"):
        recipe_from_dict({**data, "kl_anchor": {"coef": 0.1, "examples": "missing.jsonl"}})


@pytest.mark.parametrize("with_emoreg", [False, True])
def test_train_runs_a_recipe_with_the_anchor(tmp_path, with_emoreg):
    from emoreg.models.provenance import TRAIN_INFO_FILE
    from emoreg.train.recipe import recipe_from_dict
    from emoreg.train.run import train
    from tests.test_train_run import tiny_recipe

    data = tiny_recipe(tmp_path, "sft", save_strategy="no")
    data["emoreg"]["enabled"] = with_emoreg
    data["kl_anchor"] = anchor_config(tmp_path)
    result = train(recipe_from_dict(data))
    logs = [h for h in result.log_history if "loss" in h]
    assert len(logs) == 2 and logs[0][METRIC] == 0.0 and logs[1][METRIC] > 0
    assert all(("emoreg/L2/tokens" in h) is with_emoreg for h in logs)
    info = json.loads((Path(result.output_dir) / TRAIN_INFO_FILE).read_text())
    assert info["recipe"]["kl_anchor"]["coef"] == COEF and info["recipe"]["kl_anchor"]["direction"] == "forward"


def test_bad_anchor_rows_fail_before_the_model_loads(tmp_path, monkeypatch):
    from emoreg.models import loading
    from emoreg.train.recipe import recipe_from_dict
    from emoreg.train.run import train
    from tests.test_train_run import tiny_recipe

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model_and_tokenizer", refuse)
    data = tiny_recipe(tmp_path, "sft", assets={"model": "unused", "bundle": "unused"})
    data["emoreg"]["enabled"] = False
    data["kl_anchor"] = {"coef": 0.1, "examples": str(write_jsonl(tmp_path / "bad.jsonl", [{"txt": "x"}]))}
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 1: an anchor row needs exactly one of"):
        train(recipe_from_dict(data))


# --------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ddp_gradient_is_the_rank_average_and_ranks_take_different_anchor_batches(tmp_path):
    """2 DDP ranks (torchrun, gloo), GA 2, one SGD step: ``without - with`` == ``coef / (R G) sum grad KL`` over
    the 4 anchor batches the ranks took (rank r takes stream batches r and r + 2)."""
    from tests.distributed.ddp_kl_anchor import COEF as DDP_COEF
    from tests.distributed.ddp_kl_anchor import GA as DDP_GA
    from tests.distributed.ddp_kl_anchor import anchor_settings
    from tests.test_distributed import SCRIPTS, _env, _launch, _load

    config = anchor_config(tmp_path)
    out = tmp_path / "ddp"
    _launch(lambda port: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(port),
                          str(SCRIPTS / "ddp_kl_anchor.py"), "--out", str(out), "--anchor", config["examples"]],
            _env(ACCELERATE_USE_CPU="1"))
    assert _load(out / "world.json") == {"world_size": 2, "distributed_type": "DistributedType.MULTI_CPU"}
    taken = [_load(out / f"calls_rank{r}.json") for r in range(2)]
    assert taken == [{"calls": 2, "batches": [0, 2]}, {"calls": 2, "batches": [1, 3]}]

    reference, start = make_tiny_llama().double(), make_tiny_llama().double()
    reference.load_state_dict(_load(out / "reference.pt"))
    start.load_state_dict(_load(out / "start.pt"))
    anchor = KLAnchor(copy.deepcopy(reference), make_tiny_tokenizer(),
                      anchor_settings(Path(config["examples"]))).prepare()
    batches = [anchor.batch(i) for i in range(4)]
    expected = hand_kl_gradient(start, reference, batches, coef=DDP_COEF, ga=2 * DDP_GA)  # 1 / (R G)
    assert_penalty_gradient(trainable_state(start), _load(out / "with.pt"), _load(out / "without.pt"), expected,
                            rtol=RTOL, atol_fraction=ATOL_FRACTION)
    logged = [h[METRIC] for h in _load(out / "log_history.json") if METRIC in h]
    hand = [float(hand_kl(copy.deepcopy(start), reference, batch).detach()) for batch in batches]
    assert logged == pytest.approx([sum(hand) / 4], rel=1e-6)  # averaged over both ranks' calls
