"""Adaptive directions (``RegularizerConfig.refit``): the refitted direction, exact gradients, scoping, schedule,
logging, resume and errors."""

import json
import random

import pytest
import torch
import transformers
from datasets import Dataset

from emoreg import EmotionVectors
from emoreg.errors import ConfigError
from emoreg.integrations import EmoRegCallback, attach
from emoreg.integrations.callback import REFIT_FILE, STATE_FILE
from emoreg.models.layout import find_decoder_layers
from emoreg.regularization import Regularizer, RegularizerConfig
from emoreg.regularization.config import RefitConfig
from emoreg.regularization.refit import refit_texts
from emoreg.vectors.corpus import load_builtin_corpus, load_builtin_neutral
from tests.regularizer_helpers import make_bundle
from tests.tiny_models import make_tiny_llama, make_tiny_tokenizer
from tests.trainer_harness import SGD_ARGS, assert_penalty_gradient, hand_penalty_gradient, one_step, trainable_state

trl = pytest.importorskip("trl")

RULES = {"desperate": {"weight": 1.0}, "hostile": {"weight": 0.5, "kind": "hinge"}}
LAYERS = [1, 2]
REFIT = {"every": 2, "texts_per_emotion": 3, "max_length": 40}


def _config(**overrides):
    return {"emotions": RULES, "layers": LAYERS, "coef": 0.5, "refit": dict(REFIT), **overrides}


# ------------------------------------------------------------------------------------------------ by hand


def _layer_states(model, ids, layer):
    """Output of decoder ``layer`` for one unpadded text, from output_hidden_states (float64)."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0].to(torch.float64)


def _hand_refit(model, tokenizer, vectors, emotions, layer, *, texts_per_emotion, max_length, seed=0,
                token_offset=50, sink=1, pca_variance=0.5, percentile=95.0):
    """The refitted direction and statistics, text by text, without emoreg's reader."""
    stories, neutral = refit_texts(emotions, texts_per_emotion, seed)
    encode = lambda text: tokenizer(text, truncation=True, max_length=max_length)["input_ids"]  # noqa: E731

    def story_mean(text):
        h = _layer_states(model, encode(text), layer)
        start = max(min(token_offset, h.shape[0] // 2), sink)
        return h[start:].mean(0)

    neutral_states = [_layer_states(model, encode(text), layer)[sink:] for text in neutral]
    neutral_mean = torch.stack([h.mean(0) for h in neutral_states]).mean(0)
    tokens = torch.cat(neutral_states)
    mu = tokens.mean(0)
    covariance = tokens.T @ tokens / tokens.shape[0] - torch.outer(mu, mu)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eigenvalues, eigenvectors = eigenvalues.flip(0).clamp(min=0), eigenvectors.flip(1)
    cumulative = torch.cumsum(eigenvalues, 0) / eigenvalues.sum()
    k = min(int((cumulative < pca_variance).sum()) + 1, tokens.shape[1] - 1)
    basis = eigenvectors[:, :k]
    out = {}
    for emotion in emotions:
        raw = torch.stack([story_mean(text) for text in stories[emotion]]).mean(0) - neutral_mean
        raw = raw - basis @ (basis.T @ raw)
        unit = raw / raw.norm()
        fixed = vectors.direction(emotion, layer).to(torch.float64)
        if unit @ fixed < 0:
            unit = -unit
        p = tokens @ unit
        out[emotion] = {"direction": unit, "cos": float(unit @ fixed / fixed.norm()), "mean": float(p.mean()),
                        "std": float(p.std(unbiased=False)), "p95": float(torch.quantile(p, 0.95)),
                        "threshold_raw": float(torch.quantile(p, percentile / 100))}
    return out


def _refit_bundle(reg, emotions, layers, level=95.0):
    """The regulariser's refitted directions as a bundle (statistics: the refit's mean, std, hinge threshold)."""
    fitted = reg.refit_directions
    directions = torch.stack([torch.stack([fitted[layer][e].direction for e in emotions]) for layer in layers])
    stat = lambda name: torch.tensor([[getattr(fitted[layer][e], name) for e in emotions]  # noqa: E731
                                      for layer in layers], dtype=torch.float64)
    return EmotionVectors(directions, list(emotions), list(layers), stats_mean=stat("mean"), stats_std=stat("std"),
                          stats_percentiles=stat("threshold_raw")[..., None], percentile_levels=[level])


# ------------------------------------------------------------------------------------------------ the direction


def test_refitted_direction_equals_a_hand_computation(tiny_tokenizer):
    model = make_tiny_llama().double()
    vectors = make_bundle(model)
    vectors.extraction = {"token_offset": 12, "sink_tokens": 1, "pca_variance": 0.3}  # read from the bundle
    rules = {"desperate": 1.0, "hostile": {"kind": "hinge", "threshold_percentile": 75.0}}
    config = RegularizerConfig(emotions=rules, layers=LAYERS, refit={"every": 3, "texts_per_emotion": 4,
                                                                     "max_length": 48, "batch_size": 3})
    reg = Regularizer(model, vectors, config, tokenizer=tiny_tokenizer)
    fitted = reg.refit()
    for layer in LAYERS:
        for emotion in ("desperate", "hostile"):
            want = _hand_refit(model, tiny_tokenizer, vectors, [emotion], layer, texts_per_emotion=4, max_length=48,
                               token_offset=12, pca_variance=0.3,
                               percentile=75.0 if emotion == "hostile" else 95.0)[emotion]
            got = fitted[layer][emotion]
            torch.testing.assert_close(got.direction.double(), want["direction"], rtol=0, atol=1e-5)
            assert got.direction.norm() == pytest.approx(1.0, abs=1e-6)
            assert got.cos >= 0 and got.cos == pytest.approx(want["cos"], abs=1e-6)
            for name in ("mean", "std", "p95", "threshold_raw"):
                assert getattr(got, name) == pytest.approx(want[name], abs=1e-5), name
    # the plan penalises the refitted rows with the refit's own statistics (hinge threshold in its z units)
    plan = reg._plans[2]
    j = plan.emotions.index("hostile@refit")
    hostile = fitted[2]["hostile"]
    assert plan.emotions == ["desperate", "hostile", "desperate@refit", "hostile@refit"]
    assert plan.mean[j].item() == pytest.approx(hostile.mean) and plan.std[j].item() == pytest.approx(hostile.std)
    row = plan.penalty_index.tolist().index(j)
    assert plan.penalty_threshold[row].item() == pytest.approx((hostile.threshold_raw - hostile.mean) / hostile.std,
                                                               rel=1e-5)


def test_refit_texts_are_a_fixed_seeded_subset_of_the_builtin_stories():
    stories, neutral = refit_texts(["desperate", "calm"], 5, seed=3)
    corpus = load_builtin_corpus(["desperate", "calm"])
    for emotion in ("desperate", "calm"):
        pool = [s.text for s in corpus.stories if s.emotion == emotion]
        chosen = sorted(random.Random(f"3:{emotion}").sample(range(len(pool)), 5))
        assert stories[emotion] == [pool[i] for i in chosen]
    pool = [t.text for t in load_builtin_neutral()]
    assert neutral == [pool[i] for i in sorted(random.Random("3:neutral").sample(range(len(pool)), 5))]
    # each emotion's subset does not depend on the others listed; another seed picks other texts
    assert refit_texts(["calm"], 5, seed=3)[0]["calm"] == stories["calm"]
    assert refit_texts(["desperate"], 5, seed=4)[0]["desperate"] != stories["desperate"]


# ------------------------------------------------------------------------------------------------ exact gradient


def _dataset(n=16):
    texts = [f"story {i}: the build failed again and the deadline is {'tomorrow' * (i % 3 + 1)}" for i in range(n)]
    return Dataset.from_dict({"text": texts})


def _trainer(output_dir, model, ga=1, **overrides):
    settings = {**SGD_ARGS, "max_steps": 1, "gradient_checkpointing": False, **overrides}
    args = trl.SFTConfig(output_dir=str(output_dir), per_device_train_batch_size=2, gradient_accumulation_steps=ga,
                         **settings)
    return trl.SFTTrainer(model=model, args=args, train_dataset=_dataset(), processing_class=make_tiny_tokenizer())


def test_one_sgd_step_takes_the_gradient_of_the_fixed_plus_weighted_refit_penalty(tmp_path, tiny_tokenizer):
    weight, coef, ga = 0.7, 0.5, 2
    config = _config(coef=coef, refit={**REFIT, "every": 5, "weight": weight})  # one refit: at the start
    base = make_tiny_llama().double()
    vectors = make_bundle(base)
    before = trainable_state(base)
    without, _ = one_step(lambda: _trainer(tmp_path / "a", make_tiny_llama().double(), ga), None)
    callbacks = []
    with_emoreg, batches = one_step(lambda: _trainer(tmp_path / "b", make_tiny_llama().double(), ga),
                                    lambda trainer: callbacks.append(attach(trainer, vectors, config)))
    reg = callbacks[0].regularizer
    # the directions in use are the initial model's refit ...
    fresh = Regularizer(make_tiny_llama().double(), vectors, config, tokenizer=tiny_tokenizer).refit()
    for layer in LAYERS:
        for emotion in RULES:
            assert torch.equal(reg.refit_directions[layer][emotion].direction, fresh[layer][emotion].direction)
    # ... and the step's extra descent is coef * grad(R_fixed + weight * R_refit) / GA, computed by hand
    refit_vectors = _refit_bundle(reg, list(RULES), LAYERS)
    refit_rules = {e: {**spec, "weight": weight * spec["weight"]} for e, spec in RULES.items()}
    fixed_grad = hand_penalty_gradient(base, batches, vectors, RULES, LAYERS, coef, ga)
    refit_grad = hand_penalty_gradient(base, batches, refit_vectors, refit_rules, LAYERS, coef, ga)
    assert max(float(g.abs().max()) for g in refit_grad.values()) > 1e-3 * max(
        float(g.abs().max()) for g in fixed_grad.values())  # the refit term is not negligible
    expected = {name: fixed_grad[name] + refit_grad[name] for name in fixed_grad}
    assert_penalty_gradient(before, trainable_state(with_emoreg.model), trainable_state(without.model), expected)


# ------------------------------------------------------------------------------------------------ scoping


def _batch(tokenizer):
    enc = tokenizer(["a desperate little story about deadlines", "calm text"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _hook_counts(model):
    modules = [model, model.model, *find_decoder_layers(model)]
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in modules]


def test_refit_read_changes_no_metric_nor_penalty_and_restores_modes_and_hooks(tiny_tokenizer):
    model = make_tiny_llama().train()
    model.model.layers[3].eval()  # a module the user keeps in eval mode stays so
    modes = {name: m.training for name, m in model.named_modules()}
    input_ids, attention_mask = _batch(tiny_tokenizer)
    config = RegularizerConfig(emotions={**RULES, "calm": {"mode": "steer", "steer_coef": 3.0}}, layers=LAYERS,
                               refit=REFIT)
    hooks_before = _hook_counts(model)
    with Regularizer(model, make_bundle(model), config, tokenizer=tiny_tokenizer) as reg:
        with pytest.raises(ConfigError, match="no refit has run: call reg.refit"):
            model(input_ids=input_ids, attention_mask=attention_mask)
        reg.refit()
        model(input_ids=input_ids, attention_mask=attention_mask)
        pending = [reg._metrics[layer].pending(torch.device("cpu")).clone() for layer in LAYERS]
        penalties = list(reg._pending)
        attached_hooks = _hook_counts(model)
        first = reg.refit_directions
        second = reg.refit()
        assert all(torch.equal(a, b) for a, b in zip(
            [reg._metrics[layer].pending(torch.device("cpu")) for layer in LAYERS], pending))
        assert reg._pending == penalties and reg._depth == 0
        assert _hook_counts(model) == attached_hooks
        assert {name: m.training for name, m in model.named_modules()} == modes
        # same model, same texts: the same directions (the steering of calm never reached the read)
        detached = Regularizer(model, make_bundle(model), config, tokenizer=tiny_tokenizer).refit()
        for layer in LAYERS:
            for emotion in RULES:
                assert torch.equal(first[layer][emotion].direction, second[layer][emotion].direction)
                assert torch.equal(detached[layer][emotion].direction, second[layer][emotion].direction)
    assert _hook_counts(model) == hooks_before
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_suspended_regularizer_does_nothing_in_a_training_forward(tiny_tokenizer):
    model = make_tiny_llama().train()
    input_ids, attention_mask = _batch(tiny_tokenizer)
    reference = model(input_ids=input_ids, attention_mask=attention_mask).logits.detach()
    config = RegularizerConfig(emotions={"desperate": 1.0, "calm": {"mode": "steer", "steer_coef": 5.0}},
                               layers=[1])
    with Regularizer(model, make_bundle(model), config) as reg:
        with reg.suspended():
            suspended = model(input_ids=input_ids, attention_mask=attention_mask).logits.detach()
        assert torch.equal(suspended, reference)
        assert not reg._pending and reg.metrics() == {"emoreg/coef": 0.1}
        steered = model(input_ids=input_ids, attention_mask=attention_mask).logits.detach()
        assert not torch.equal(steered, reference) and len(reg._pending) == 1


# ------------------------------------------------------------------------------------------------ schedule, logs


def _record_refits(monkeypatch):
    steps = []
    original = Regularizer.refit

    def refit(self, step=None):
        steps.append(step if step is not None else self.step_count)
        return original(self, step)

    monkeypatch.setattr(Regularizer, "refit", refit)
    return steps


def test_refits_run_at_steps_0_N_2N_and_cosines_are_logged(tmp_path, monkeypatch):
    steps = _record_refits(monkeypatch)
    model = make_tiny_llama()
    trainer = _trainer(tmp_path, model, max_steps=5, learning_rate=1e-3)  # lr 1 would diverge in 5 steps
    attach(trainer, make_bundle(model), _config())
    trainer.train()
    assert steps == [0, 2, 4]
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["emoreg/refit_count"] for h in logged] == [1, 2, 2, 3, 3]  # a refit after step 2 precedes its log
    for entry in logged:
        for layer in LAYERS:
            for emotion in RULES:
                assert 0.0 <= entry[f"emoreg/refit_cos/{emotion}/L{layer}"] <= 1.0
                assert f"emoreg/{emotion}@refit/L{layer}/z" in entry
                assert f"emoreg/{emotion}@refit/L{layer}/penalty" in entry
    assert all(not layer._forward_hooks for layer in find_decoder_layers(model))
    assert (tmp_path / REFIT_FILE).is_file()


def test_plain_loop_step_refits_every_n_steps(tiny_tokenizer, monkeypatch):
    steps = _record_refits(monkeypatch)
    model = make_tiny_llama().train()
    config = RegularizerConfig(emotions={"desperate": 1.0}, layers=[2], refit={**REFIT, "every": 3})
    with Regularizer(model, make_bundle(model), config, tokenizer=tiny_tokenizer) as reg:
        reg.refit()
        for _ in range(7):
            reg.step()
    assert steps == [0, 3, 6]


def test_resume_restores_the_same_refitted_directions(tmp_path, monkeypatch):
    config = _config(refit={**REFIT, "every": 3})  # refits at steps 0 and 3; checkpoint at step 2

    class StopAt(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True

    def run(output, stop=False, resume=False):
        model = make_tiny_llama()
        trainer = _trainer(output, model, max_steps=4, save_strategy="steps", save_steps=2, learning_rate=1e-3)
        callback = attach(trainer, make_bundle(model), config)
        seen = {}

        class Capture(transformers.TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                seen.setdefault("first", callback.regularizer.refit_directions)

        trainer.add_callback(Capture())
        if stop:
            trainer.add_callback(StopAt())
        with monkeypatch.context() as patch:
            steps = _record_refits(patch)
            trainer.train(resume_from_checkpoint=resume or None)
        logs = [h for h in trainer.state.log_history if "loss" in h]
        return steps, seen["first"], callback.regularizer.refit_directions, logs

    full_steps, _, _, full_logs = run(tmp_path / "full")
    part_steps, _, at_stop, _ = run(tmp_path / "part", stop=True)
    checkpoint = tmp_path / "part" / "checkpoint-2"
    saved = json.loads((checkpoint / STATE_FILE).read_text())["regularizer"]["refit"]
    assert saved == {"count": 1, "step": 0, "file": REFIT_FILE} and (checkpoint / REFIT_FILE).is_file()
    resumed_steps, restored, _, resumed_logs = run(tmp_path / "part", resume=True)
    assert full_steps == [0, 3] and part_steps == [0] and resumed_steps == [3]  # no refit when resuming
    for layer in LAYERS:
        for emotion in RULES:
            a, b = at_stop[layer][emotion], restored[layer][emotion]
            assert torch.equal(a.direction, b.direction) and a.to_tensor().tolist() == b.to_tensor().tolist()
    # the resumed run's step 3 read the same directions as the uninterrupted run's step 3
    key = "emoreg/desperate@refit/L2/projection"
    assert resumed_logs[-2][key] == pytest.approx(full_logs[2][key], rel=1e-5)
    assert resumed_logs[-1]["emoreg/refit_count"] == 2

    # a checkpoint without refitted directions: refit at the resumed step, with a warning
    (checkpoint / REFIT_FILE).unlink()
    again_steps, _, _, _ = run(tmp_path / "part", resume=str(checkpoint))
    assert again_steps == [2, 3]


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(mode="ablate"), r"refit re-extracts the directions of penalised emotions and is valid only with "
                              r"mode 'penalty'; no emotion is penalised here \(mode 'ablate'\)"),
        (dict(emotions={"desperate": {"mode": "steer"}}), r"valid only with mode 'penalty'.*\(mode 'steer'\)"),
        (dict(refit={"every": 0}), r"refit.every must be > 0 \(optimizer steps between refits\), got 0"),
        (dict(refit={"every": -3}), r"refit.every must be > 0"),
        (dict(refit={"every": 2.5}), r"refit.every must be an integer, got 2.5"),
        (dict(refit={"every": 2, "evry": 3}), r"refit: unknown key\(s\) 'evry' \(did you mean 'every'\?\); "
                                              r"valid keys are \['batch_size', 'every', "),
        (dict(refit={"texts_per_emotion": 4}), r"refit.every is required"),
        (dict(refit={"every": 2, "weight": -1.0}), r"refit.weight must be a number >= 0, got -1.0"),
        (dict(refit={"every": 2, "texts_per_emotion": 1}), r"refit.texts_per_emotion must be >= 2, got 1"),
        (dict(refit=5), r"refit: expected a mapping like \{'every': 50\}, got int"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        RegularizerConfig(**{"emotions": {"desperate": 1.0}, "refit": {"every": 2}, **overrides})


def test_config_round_trips_and_loads_from_yaml(tmp_path):
    config = RegularizerConfig(emotions={"desperate": 1.0, "calm": {"mode": "steer", "steer_coef": 2.0}},
                               kind="hinge", refit={"every": 10, "weight": 0.5})
    assert config.refit == RefitConfig(every=10, weight=0.5) and config.refit_emotions == ["desperate"]
    assert config.to_dict()["refit"] == {"every": 10, "texts_per_emotion": 16, "weight": 0.5, "seed": 0,
                                         "max_length": 256, "batch_size": 8}
    assert RegularizerConfig.from_dict(config.to_dict()) == config
    assert RegularizerConfig.coerce(json.loads(json.dumps(config.to_dict()))) == config
    assert RegularizerConfig(emotions={"desperate": 1.0}).refit is None
    path = tmp_path / "recipe.yaml"
    path.write_text("emoreg:\n  emotions: {desperate: 1.0}\n  refit: {every: 25, texts_per_emotion: 8}\n")
    assert RegularizerConfig.from_yaml(path, key="emoreg").refit == RefitConfig(every=25, texts_per_emotion=8)
    path.write_text("emoreg:\n  emotions: {desperate: 1.0}\n  refit: {every: 25, seeds: 8}\n")
    with pytest.raises(ConfigError, match=r"refit: unknown key\(s\) 'seeds' \(did you mean 'seed'\?\)"):
        RegularizerConfig.from_yaml(path, key="emoreg")


def test_a_tokenizer_is_required(tiny_tokenizer):
    model = make_tiny_llama()
    vectors = make_bundle(model)
    with pytest.raises(ConfigError, match=r"refit needs the model's tokenizer: pass Regularizer\(\.\.\., tokenizer="):
        Regularizer(model, vectors, _config())
    callback = EmoRegCallback(vectors, _config())
    with pytest.raises(ConfigError, match="refit needs the model's tokenizer and none is available: give the "
                                          "trainer a processing_class"):
        callback._tokenizer({})
    assert callback._tokenizer({"processing_class": tiny_tokenizer}) is tiny_tokenizer
    assert callback._tokenizer({"tokenizer": tiny_tokenizer}) is tiny_tokenizer

    class Processor:  # a multimodal processor: its tokenizer reads the texts
        tokenizer = tiny_tokenizer

    assert callback._tokenizer({"processing_class": Processor()}) is tiny_tokenizer
    assert EmoRegCallback(vectors, _config(), tokenizer=tiny_tokenizer)._tokenizer({}) is tiny_tokenizer


def test_an_emotion_without_builtin_stories_is_refused(tiny_tokenizer):
    model = make_tiny_llama()
    vectors = make_bundle(model, emotions=("desperate", "zorgish"))
    config = RegularizerConfig(emotions={"zorgish": 1.0}, layers=[2], refit=REFIT)
    with pytest.raises(ConfigError, match=r"refit reads the built-in stories of each penalised emotion: "
                                          r"emotions \['zorgish'\] have no stories in the built-in corpus"):
        Regularizer(model, vectors, config, tokenizer=tiny_tokenizer)


def test_refit_without_config_and_mismatched_state_are_errors(tiny_tokenizer):
    model = make_tiny_llama()
    vectors = make_bundle(model)
    plain = Regularizer(model, vectors, {"emotions": {"desperate": 1.0}, "layers": [2]})
    with pytest.raises(ConfigError, match=r"refit\(\) needs config.refit"):
        plain.refit()
    reg = Regularizer(model, vectors, RegularizerConfig(emotions={"desperate": 1.0}, layers=[1, 2], refit=REFIT),
                      tokenizer=tiny_tokenizer)
    reg.refit()
    state = reg.refit_state_dict()
    assert sorted(state) == ["L1/desperate/direction", "L1/desperate/stats", "L2/desperate/direction",
                             "L2/desperate/stats"]
    other = Regularizer(model, vectors, RegularizerConfig(emotions={"desperate": 1.0}, layers=[2], refit=REFIT),
                        tokenizer=tiny_tokenizer)
    with pytest.raises(ConfigError, match="do not match this regulariser's penalised emotions and layers"):
        other.load_refit_state_dict(state)
    assert not other.refit_ready


def test_non_finite_activations_in_a_refit_read_are_a_clear_error(tiny_tokenizer):
    from emoreg.errors import DataFormatError

    model = make_tiny_llama()
    vectors = make_bundle(model)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    reg = Regularizer(model, vectors, RegularizerConfig(emotions={"desperate": 1.0}, layers=[2], refit=REFIT),
                      tokenizer=tiny_tokenizer)
    with pytest.raises(DataFormatError, match="refit: non-finite activations \\(NaN or Inf\\) at layer 2"):
        reg.refit()
    assert not reg.refit_ready


# ------------------------------------------------------------------------------------------------ ZeRO-2/3


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_refit_under_deepspeed_on_two_ranks(stage, tmp_path, tiny_tokenizer):
    """Every rank runs each refit read (collective under ZeRO-3, where the parameters are partitioned) and all
    ranks use the same directions."""
    pytest.importorskip("deepspeed")
    import sys

    from tests.distributed.deepspeed_refit import REFIT as DS_REFIT
    from tests.test_distributed import SCRIPTS, _cpu_variant, _env, _launch

    config = _cpu_variant(f"deepspeed_zero{stage}.yaml", tmp_path)
    out = tmp_path / "run"
    _launch(lambda port: [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                          "--main_process_port", str(port), str(SCRIPTS / "deepspeed_refit.py"), "--out", str(out)],
            _env())
    assert json.loads((out / "engine.json").read_text()) == {"engine": "DeepSpeedEngine", "zero_stage": stage,
                                                              "world_size": 2}
    ranks = [torch.load(out / f"refit_rank{r}.pt", weights_only=False) for r in range(2)]
    assert all(r["partitioned"] == (stage == 3) for r in ranks)
    assert ranks[0]["steps"] == ranks[1]["steps"] == [0, 1, 2]
    for key in ranks[0]["final"]:
        assert torch.equal(ranks[0]["step0"][key], ranks[1]["step0"][key])
        assert torch.equal(ranks[0]["final"][key], ranks[1]["final"][key])
    # step 0 read the initial model, partitioned over the ranks: the same directions as one process
    from tests.distributed.common import LAYERS as DS_LAYERS
    from tests.distributed.common import RULES as DS_RULES

    model = make_tiny_llama()
    alone = Regularizer(model, make_bundle(model), {"emotions": DS_RULES, "layers": DS_LAYERS, "refit": DS_REFIT},
                        tokenizer=tiny_tokenizer).refit()
    for layer in DS_LAYERS:
        for emotion in DS_RULES:
            torch.testing.assert_close(ranks[0]["step0"][f"L{layer}/{emotion}"], alone[layer][emotion].direction,
                                       rtol=0, atol=1e-5)
    logs = [h for h in json.loads((out / "log.json").read_text()) if "loss" in h]
    assert [h["emoreg/refit_count"] for h in logs] == [2, 3]
    assert all(f"emoreg/refit_cos/{e}/L{layer}" in h for h in logs for e in DS_RULES for layer in DS_LAYERS)

