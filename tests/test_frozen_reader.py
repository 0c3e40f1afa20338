"""Frozen-reader regularisation (no gradient through the reader): the reader, the GRPO reward, data screening,
and their recipe wiring, on tiny random models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from emoreg.errors import ConfigError, DataFormatError
from emoreg.regularization.frozen_reader import EmotionReadingReward, FrozenEmotionReader, check_reader_settings
from emoreg.train.recipe import recipe_from_dict
from emoreg.train.screening import screen_rows
from tests.regularizer_helpers import make_bundle
from tests.test_train_run import tiny_assets, tiny_recipe, write_rows
from tests.tiny_models import make_tiny_llama, make_tiny_tokenizer

LAYER = 2  # not the last layer: output_hidden_states applies the final norm to the last entry
EMOTIONS = {"desperate": 1.0, "hostile": 0.5}
TEXTS = ["please, I am begging you, fix it now", "ok", "the plan is fine, step by step.", "x", ""]
CHAT_PROMPTS = [[{"role": "user", "content": "the build is red again"}],
                [{"role": "system", "content": "be brief"}, {"role": "user", "content": "status?"}],
                [{"role": "user", "content": "hi"}]]
CHAT_REPLIES = ["I cannot, I cannot, please help", "all green.", ""]


def _reader(model=None, emotions=EMOTIONS, **kwargs) -> FrozenEmotionReader:
    model = model if model is not None else make_tiny_llama()
    return FrozenEmotionReader(model, make_tiny_tokenizer(), make_bundle(model), emotions, layer=LAYER,
                               batch_size=2, **kwargs)


def _direct_z(reader: FrozenEmotionReader, ids: list[int], first: int) -> torch.Tensor:
    """z of the mean of positions ``first:`` of ``ids`` at LAYER, from output_hidden_states (no emoreg code)."""
    with torch.no_grad():
        out = reader.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    mean = out.hidden_states[LAYER + 1][0, first:].float().mean(dim=0)
    vectors = reader.vectors
    stats = vectors.stats(LAYER)
    z = []
    for emotion in reader.emotions:
        i = vectors.emotion_index(emotion)
        projection = mean @ vectors.direction(emotion, LAYER)
        z.append((projection - stats.mean[i]) / stats.std[i])
    return torch.stack(z)


def _expected_text_z(reader, text):
    ids = reader.tokenizer(text, add_special_tokens=True)["input_ids"]
    return _direct_z(reader, ids, 1) if len(ids) > 1 else torch.full((len(reader.emotions),), float("nan"))


def _expected_reply_z(reader, messages, reply):
    tokenizer = reader.tokenizer
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    if not reply_ids:
        return torch.full((len(reader.emotions),), float("nan"))
    return _direct_z(reader, prompt_ids + reply_ids, len(prompt_ids))


def _close(a, b):
    return torch.allclose(a, b, atol=1e-4, rtol=1e-4, equal_nan=True)


# ---------------------------------------------------------------------------------------------- (a) reader


def test_reader_z_equals_a_direct_computation_from_hidden_states():
    reader = _reader()
    z = reader.read_texts(TEXTS)  # batches of 2 with padding
    assert z.shape == (len(TEXTS), 2)
    for row, text in zip(z, TEXTS):
        assert _close(row, _expected_text_z(reader, text)), text
    assert z[3].isnan().all() and z[4].isnan().all()  # one token (the sink) or none: nothing to read

    chat = reader.read_replies(CHAT_PROMPTS, CHAT_REPLIES)
    for row, messages, reply in zip(chat, CHAT_PROMPTS, CHAT_REPLIES):
        assert _close(row, _expected_reply_z(reader, messages, reply)), reply
    assert chat[2].isnan().all()
    # a batch's padding does not change a row's reading
    assert _close(reader.read_texts(TEXTS[:1])[0], z[0])


def test_reader_defaults_and_bad_settings():
    model = make_tiny_llama()
    vectors = make_bundle(model)
    reader = FrozenEmotionReader(model, make_tiny_tokenizer(), vectors, ["desperate"])
    assert reader.layer == vectors.default_layer and reader.weights == {"desperate": 1.0}
    with pytest.raises(ConfigError, match=r"'desperat' is not in the bundle \(did you mean 'desperate'\?\)"):
        check_reader_settings(vectors, {"desperat": 1.0})
    with pytest.raises(ConfigError, match=r"layer 7 is not in the bundle"):
        check_reader_settings(vectors, {"desperate": 1.0}, 7)
    with pytest.raises(ConfigError, match="weight must be a positive number"):
        check_reader_settings(vectors, {"desperate": -1.0})
    with pytest.raises(ConfigError, match="emotions is empty"):
        check_reader_settings(vectors, {})


# ---------------------------------------------------------------------------------------------- (b) reward


def _formula(z, weights, threshold):
    value = sum(w * max(0.0, float(z[i]) - threshold) for i, w in enumerate(weights))
    return 0.0 if math.isnan(value) else -value


def test_reward_equals_the_formula_for_string_completions():
    reader = _reader()
    expected_z = torch.stack([_expected_text_z(reader, t) for t in TEXTS])
    readable = expected_z[~expected_z.isnan().any(dim=1)]
    threshold = float(readable.median())  # some readings above, some below
    reward = EmotionReadingReward(reader, threshold=threshold)
    logged = {}
    values = reward(["p"] * len(TEXTS), TEXTS, log_metric=lambda name, value: logged.__setitem__(name, value))
    weights = list(EMOTIONS.values())
    assert values == pytest.approx([_formula(z, weights, threshold) for z in expected_z], abs=1e-4)
    assert all(isinstance(v, float) for v in values) and values[3] == values[4] == 0.0
    assert any(v < 0 for v in values) and max(values) == 0.0
    assert reward.__name__ == "emotion_reading"
    assert set(logged) == {"emotion_reading/desperate/z", "emotion_reading/hostile/z"}
    assert logged["emotion_reading/desperate/z"] == pytest.approx(float(readable[:, 0].mean()), abs=1e-4)


def test_reward_equals_the_formula_for_conversational_completions():
    reader = _reader()
    completions = [[{"role": "assistant", "content": reply}] for reply in CHAT_REPLIES]
    expected_z = torch.stack([_expected_reply_z(reader, m, r) for m, r in zip(CHAT_PROMPTS, CHAT_REPLIES)])
    threshold = -0.5
    values = EmotionReadingReward(reader, threshold=threshold)(CHAT_PROMPTS, completions)
    assert values == pytest.approx([_formula(z, list(EMOTIONS.values()), threshold) for z in expected_z], abs=1e-4)
    assert values[2] == 0.0  # empty reply
    # default threshold 0
    default = EmotionReadingReward(reader)(CHAT_PROMPTS, completions)
    assert default == pytest.approx([_formula(z, list(EMOTIONS.values()), 0.0) for z in expected_z], abs=1e-4)
    with pytest.raises(ConfigError, match="threshold must be a finite number"):
        EmotionReadingReward(reader, threshold=float("nan"))


# ---------------------------------------------------------------------------------------------- (c) no gradient


def test_no_gradient_reaches_the_policy_and_the_reader_stays_frozen():
    policy = make_tiny_llama()
    policy.train()
    reader = _reader(policy)  # built from the policy itself: the reader keeps a frozen deep copy
    assert reader.model is not policy and not reader.model.training
    assert all(p.requires_grad for p in policy.parameters())  # the policy is untouched
    assert not any(p.requires_grad for p in reader.model.parameters())
    reader.check_independent(policy)
    before = {k: v.clone() for k, v in reader.model.state_dict().items()}

    modes = []
    handle = reader.model.model.layers[0].register_forward_hook(
        lambda *_: modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled())))
    ids = make_tiny_tokenizer()("the build is red", return_tensors="pt")["input_ids"]
    loss = policy(input_ids=ids).logits.float().pow(2).mean()
    rewards = EmotionReadingReward(reader)(CHAT_PROMPTS, [[{"role": "assistant", "content": r}] for r in CHAT_REPLIES])
    rewards += EmotionReadingReward(reader)(["p"] * len(TEXTS), TEXTS)
    handle.remove()
    assert modes and all(inference and not grad for inference, grad in modes)
    assert all(type(r) is float for r in rewards)  # plain numbers: no graph to follow
    (loss + sum(rewards)).backward()
    assert all(p.grad is None for p in reader.model.parameters())
    assert all(p.grad is not None for p in policy.parameters() if p.requires_grad)
    after = reader.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    shared = FrozenEmotionReader(policy, make_tiny_tokenizer(), reader.vectors, EMOTIONS, layer=LAYER, copy=False)
    with pytest.raises(ConfigError, match="shares .* parameter"):
        shared.check_independent(policy)


# ---------------------------------------------------------------------------------------------- (d) GRPO


def test_grpo_trains_with_the_emotion_reward_and_logs_it(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    policy = make_tiny_llama()
    reader = _reader(make_tiny_llama())
    frozen = {k: v.clone() for k, v in reader.model.state_dict().items()}
    initial = {k: v.clone() for k, v in policy.state_dict().items()}
    reward = EmotionReadingReward(reader, threshold=-1.0)
    calls = []

    def counting(prompts, completions, **kwargs):
        calls.append(len(completions))
        return reward(prompts, completions, **kwargs)

    counting.__name__ = reward.__name__
    prompts = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"task {i}: the tests fail"}]
                                            for i in range(4)]})
    args = trl.GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2,
                          max_completion_length=6, max_steps=2, learning_rate=1e-2, beta=0.0, logging_steps=1,
                          report_to="none", use_cpu=True, bf16=False, save_strategy="no", disable_tqdm=True,
                          seed=0)
    trainer = trl.GRPOTrainer(model=policy, reward_funcs=[counting], args=args, train_dataset=prompts,
                              processing_class=make_tiny_tokenizer())
    reader.check_independent(trainer.model)
    trainer.train()

    logs = [entry for entry in trainer.state.log_history if "rewards/emotion_reading/mean" in entry]
    assert len(logs) == 2 and all(math.isfinite(e["rewards/emotion_reading/mean"]) for e in logs)
    assert all(e["rewards/emotion_reading/mean"] <= 0 for e in logs)
    assert any("emotion_reading/desperate/z" in e for e in trainer.state.log_history)
    assert calls and reward.last_z is not None and reward.last_z.shape[1] == 2
    assert all(torch.equal(frozen[k], v) for k, v in reader.model.state_dict().items())
    assert not any(p.requires_grad for p in reader.model.parameters())
    assert any(not torch.equal(initial[k], v) for k, v in policy.state_dict().items())  # the policy trained


def test_grpo_recipe_with_emotion_reading_records_the_reader(tmp_path):
    from emoreg.models.provenance import TRAIN_INFO_FILE
    from emoreg.train.run import train

    data = tiny_recipe(tmp_path, "grpo", save_strategy="no", max_steps=1)
    data["trainer"]["reward_funcs"] = ["emotion_reading", "length_penalty"]
    data["frozen_reader"] = {"emotions": {"desperate": 1.0}, "layer": None, "threshold": 0.0}
    result = train(recipe_from_dict(data))
    logs = [entry for entry in result.log_history if "loss" in entry]
    assert result.global_step == 1 and "rewards/emotion_reading/mean" in logs[0]
    assert logs[0]["rewards/emotion_reading/mean"] <= 0
    info = json.loads((Path(result.output_dir) / TRAIN_INFO_FILE).read_text())
    reader = info["frozen_reader"]
    assert reader["emotions"] == {"desperate": 1.0} and reader["layer"] == 3 and reader["threshold"] == 0.0
    assert reader["base_model"] == data["model"]["ref"] and len(reader["vectors"]["fingerprint"]) == 64
    assert info["screening"] is None


# ---------------------------------------------------------------------------------------------- (e) screening


def _sft_rows():
    replies = ["please please please, I beg you", "fine.", "we will plan it calmly", "NO NO NO!!! help!!!",
               "the answer is 4", "I am desperate, anything, now"]
    return [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": "draft"},
                          {"role": "user", "content": "again"},
                          {"role": "assistant", "content": reply}]} for i, reply in enumerate(replies)]


def test_screening_drops_exactly_the_rows_above_max_z():
    reader = _reader()
    rows = _sft_rows()
    expected = [float(_expected_reply_z(reader, r["messages"][:3], r["messages"][3]["content"])
                      @ torch.tensor(list(EMOTIONS.values()))) for r in rows]
    max_z = sorted(expected)[3]  # two rows lie above
    result = screen_rows(rows, "sft", reader, max_z=max_z)
    above = [i for i, s in enumerate(expected) if s > max_z]
    assert len(above) == 2 and result.dropped == above
    assert result.kept == [r for i, r in enumerate(rows) if i not in above]
    assert result.scores == pytest.approx(expected, abs=1e-4)
    record = result.to_dict()
    assert record["rows_before"] == 6 and record["rows_after"] == 4 and record["dropped_rows"] == above
    assert record["field"] == "messages (last assistant turn)" and record["layer"] == LAYER

    # DPO: chosen, read alone (strings) or after the prompt (messages)
    dpo = [{"prompt": "q", "chosen": text, "rejected": "r"} for text in TEXTS[:3]]
    text_scores = [float(_expected_text_z(reader, t) @ torch.tensor(list(EMOTIONS.values()))) for t in TEXTS[:3]]
    cut = sorted(text_scores)[1]
    result = screen_rows(dpo, "dpo", reader, max_z=cut)
    assert result.dropped == [i for i, s in enumerate(text_scores) if s > cut] and result.field == "chosen"


def test_screening_errors_name_the_row_and_field():
    reader = _reader()
    rows = _sft_rows()
    rows[2]["messages"][3]["content"] = ""
    with pytest.raises(DataFormatError, match=r"row 2, field 'messages \(last assistant turn\)': no token to read"):
        screen_rows(rows, "sft", reader, max_z=2.0)
    with pytest.raises(ConfigError, match=r"dropped all 6 rows.*raise data\.screen\.max_z"):
        screen_rows(_sft_rows(), "sft", reader, max_z=-1e9)
    with pytest.raises(ConfigError, match="'reweight' is not supported: TRL's SFTTrainer and DPOTrainer"):
        screen_rows(_sft_rows(), "sft", reader, max_z=2.0, mode="reweight")
    with pytest.raises(ConfigError, match="data.screen is for trainer.type sft or dpo"):
        screen_rows([{"prompt": "p"}], "grpo", reader, max_z=2.0)


def test_sft_recipe_screens_rows_and_records_them(tmp_path):
    from emoreg.models.provenance import TRAIN_INFO_FILE
    from emoreg.train.run import build_trainer
    from emoreg.vectors.bundle import EmotionVectors

    data = tiny_recipe(tmp_path, "sft", save_strategy="no", max_steps=1)
    rows = _sft_rows()
    write_rows(Path(data["data"]["source"]), rows)
    reader = FrozenEmotionReader.from_pretrained(data["model"]["ref"], EmotionVectors.from_pretrained(
        data["emoreg"]["vectors"]), {"desperate": 1.0}, layer=LAYER)
    scores = reader.weighted(reader.read_replies([r["messages"][:3] for r in rows],
                                                 [r["messages"][3]["content"] for r in rows])).tolist()
    max_z = sorted(scores)[2]
    above = [i for i, s in enumerate(scores) if s > max_z]
    data["data"]["screen"] = {"emotions": {"desperate": 1.0}, "max_z": max_z, "layer": LAYER}
    trainer, _ = build_trainer(recipe_from_dict(data))
    info = next(c for c in trainer.callback_handler.callbacks if type(c).__name__ == "TrainInfoCallback").info
    screening = info["screening"]
    assert screening["dropped_rows"] == above and len(above) == 3
    assert screening["rows_before"] == 6 and screening["rows_after"] == len(trainer.train_dataset) == 3
    assert screening["max_z"] == max_z and screening["vectors"]["fingerprint"]
    assert info["frozen_reader"] is None
    trainer.train()
    trainer.save_model(data["output_dir"])
    trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
    saved = json.loads((Path(data["output_dir"]) / TRAIN_INFO_FILE).read_text())
    assert saved["screening"]["dropped_rows"] == screening["dropped_rows"]


# ---------------------------------------------------------------------------------------------- (f) recipe


def _grpo_dict(**frozen):
    return {"data": {"source": "rows.jsonl"}, "emoreg": {"enabled": False},
            "trainer": {"type": "grpo", "args": {"num_generations": 2}, "reward_funcs": ["emotion_reading"]},
            "frozen_reader": {"emotions": {"desperate": 1.0}, **frozen}}


def _sft_dict(**screen):
    return {"data": {"source": "rows.jsonl", "screen": {"emotions": {"desperate": 1.0}, **screen}},
            "emoreg": {"enabled": False}, "trainer": {"type": "sft"}}


@pytest.mark.parametrize("data, overrides, expected", [
    (_grpo_dict(treshold=1.0), [], r"unknown key 'frozen_reader\.treshold' \(did you mean 'frozen_reader\.thresh"),
    (_grpo_dict(), ["frozen_reader.emotion={desperate: 1}"],
     r"override: unknown key 'frozen_reader\.emotion' \(did you mean 'frozen_reader\.emotions'\?\)"),
    ({**_grpo_dict(), "frozen_reaedr": {}}, [], r"unknown key 'frozen_reaedr' \(did you mean 'frozen_reader'\?\)"),
    (_grpo_dict(), ["trainer.reward_funcs=[emotion_readin]"],
     r"unknown reward 'emotion_readin' \(did you mean 'emotion_reading'\?\)"),
    (_grpo_dict(), ["trainer.reward_funcs=[calm_keywords]"], r"frozen_reader is set, but trainer\.reward_funcs"),
    ({**_grpo_dict(), "frozen_reader": None}, [], r"names 'emotion_reading', which needs a frozen_reader block"),
    (_grpo_dict(emotions={}), [], r"frozen_reader\.emotions is empty"),
    (_grpo_dict(), ["frozen_reader.emotions.desperate=0"], r"frozen_reader\.emotions\.desperate: the weight must"),
    (_grpo_dict(layer=-1), [], r"frozen_reader\.layer must be >= 0"),
    (_sft_dict(max_zz=1.0), [], r"unknown key 'data\.screen\.max_zz' \(did you mean 'data\.screen\.max_z'\?\)"),
    (_sft_dict(), ["data.screen.mdoe=drop"], r"unknown key 'data\.screen\.mdoe' \(did you mean 'data\.screen\.mode"),
    (_sft_dict(mode="dorp"), [], r"data\.screen\.mode must be one of \['drop'\], got 'dorp' \(did you mean 'drop'"),
    (_sft_dict(mode="reweight"), [], r"'reweight' is not supported"),
    (_sft_dict(max_z=float("inf")), [], r"data\.screen\.max_z must be a finite number"),
    (_sft_dict(), ["trainer.type=grpo", "trainer.reward_funcs=[calm_keywords]"],
     r"data\.screen is for trainer\.type sft or dpo"),
    ({**_sft_dict(), "frozen_reader": {"emotions": {"desperate": 1.0}}}, [],
     r"frozen_reader configures the GRPO reward 'emotion_reading', not trainer\.type 'sft'"),
])
def test_recipe_typos_and_bad_values_in_the_new_blocks(data, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        recipe_from_dict(data, overrides=overrides)


def test_emotion_typos_fail_against_the_bundle_before_any_model_loads(tmp_path, monkeypatch):
    from emoreg.models import loading
    from emoreg.train.run import build_trainer

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the reader settings were checked")

    assets = tiny_assets(tmp_path / "assets")
    monkeypatch.setattr(loading, "load_model_and_tokenizer", refuse)
    sft = tiny_recipe(tmp_path, "sft", assets=assets)
    sft["data"]["screen"] = {"emotions": {"desperat": 1.0}}
    with pytest.raises(ConfigError, match=r"data\.screen: emotions: 'desperat' is not in the bundle \(did you mean "
                                          r"'desperate'\?\)"):
        build_trainer(recipe_from_dict(sft))
    grpo = tiny_recipe(tmp_path, "grpo", assets=assets)
    grpo["trainer"]["reward_funcs"] = ["emotion_reading"]
    grpo["frozen_reader"] = {"emotions": {"desperate": 1.0}, "layer": 9}
    with pytest.raises(ConfigError, match=r"frozen_reader: layer 9 is not in the bundle"):
        build_trainer(recipe_from_dict(grpo))
