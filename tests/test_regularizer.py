"""The Regularizer: exact penalty gradients, exact interventions, scoped hooks, metrics."""

import pytest
import torch

from emoreg.errors import ConfigError
from emoreg.models.layout import find_decoder_layers
from emoreg.regularization import Regularizer, RegularizerConfig
from tests.regularizer_helpers import LayerOutputs, content_mask, hand_penalty, make_bundle
from tests.tiny_models import make_tiny_llama, make_tiny_tokenizer

RULES = {"desperate": {"weight": 1.0}, "hostile": {"weight": 0.5}}


def _batch(_shared_tokenizer, padding_side="right"):
    tokenizer = make_tiny_tokenizer()  # a private copy: the session fixture must not be modified
    tokenizer.padding_side = padding_side
    enc = tokenizer(["a desperate little story about deadlines", "calm text"], return_tensors="pt", padding=True)
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    labels[:, :4] = -100
    return enc["input_ids"], enc["attention_mask"], labels


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a, b, rtol=1e-9, atol=1e-12):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


def _reference_grads(model, input_ids, attention_mask, labels, vectors, rules, layers, coef, selection="all"):
    model.zero_grad()
    with LayerOutputs(model) as recorded:
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    r = hand_penalty(recorded.outputs, attention_mask, vectors, rules, layers, labels=labels, selection=selection)
    (out.loss + coef * r).backward()
    return _grads(model), float(r.detach())


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("kind_spec", [{}, {"kind": "hinge"}, {"kind": "band", "band_k": 0.5}, {"units": "z"}])
@pytest.mark.parametrize("inject", ["explicit", "autograd"])
def test_penalty_gradients_equal_the_hand_computed_objective(tiny_tokenizer, padding_side, kind_spec, inject):
    # float64 where transformers allows it; its float64 eager attention puts NaN on left-padded rows, so the
    # left-padding case runs in float32 with a float32 tolerance.
    dtype, tolerance = (torch.float64, {}) if padding_side == "right" else (torch.float32, {"rtol": 2e-4, "atol": 1e-6})
    model = make_tiny_llama().to(dtype).train()
    vectors = make_bundle(model)
    rules = {e: {**spec, **kind_spec} for e, spec in RULES.items()}
    input_ids, attention_mask, labels = _batch(tiny_tokenizer, padding_side)
    coef, layers = 0.3, [1, 3]
    expected, r = _reference_grads(model, input_ids, attention_mask, labels, vectors, rules, layers, coef)
    assert r > 0
    config = RegularizerConfig(emotions=rules, coef=coef, layers=layers)
    model.zero_grad()
    with Regularizer(model, vectors, config, inject=inject) as reg:
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        loss = out.loss + reg.penalty() if inject == "explicit" else out.loss
        loss.backward()
    _assert_same_grads(_grads(model), expected, **tolerance)


def test_completion_selection(tiny_tokenizer):
    model = make_tiny_llama().double().train()
    vectors = make_bundle(model)
    input_ids, attention_mask, labels = _batch(tiny_tokenizer)
    expected, _ = _reference_grads(model, input_ids, attention_mask, labels, vectors, RULES, [2], 0.2,
                                   selection="completion")
    model.zero_grad()
    config = RegularizerConfig(emotions=RULES, coef=0.2, layers=[2], selection="completion")
    with Regularizer(model, vectors, config, inject="autograd"):
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    _assert_same_grads(_grads(model), expected)


def test_completion_selection_without_labels_is_a_clear_error(tiny_tokenizer):
    model = make_tiny_llama().train()
    input_ids, attention_mask, _ = _batch(tiny_tokenizer)
    config = RegularizerConfig(emotions=RULES, layers=[2], selection="completion")
    with Regularizer(model, make_bundle(model), config) as reg:
        with pytest.raises(ConfigError, match="needs the completion tokens"):
            model(input_ids=input_ids, attention_mask=attention_mask)
        assert reg.attached


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_tokenizer, reentrant):
    model = make_tiny_llama().double().train()
    vectors = make_bundle(model)
    input_ids, attention_mask, labels = _batch(tiny_tokenizer)
    expected, _ = _reference_grads(model, input_ids, attention_mask, labels, vectors, RULES, [1, 2], 0.1)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.enable_input_require_grads()
    model.zero_grad()
    config = RegularizerConfig(emotions=RULES, coef=0.1, layers=[1, 2])
    with Regularizer(model, vectors, config, inject="autograd") as reg:
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
        metrics = reg.metrics()
    _assert_same_grads(_grads(model), expected)
    # metrics recorded once per forward, not again during the recompute
    assert metrics["emoreg/L1/tokens"] == float(content_mask(attention_mask).sum())


def test_lora_gradients_are_exact_and_base_frozen(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_tiny_llama().double(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                   init_lora_weights=False))
    model.train()
    vectors = make_bundle(model)
    input_ids, attention_mask, labels = _batch(tiny_tokenizer)
    expected, _ = _reference_grads(model, input_ids, attention_mask, labels, vectors, RULES, [2], 0.5)
    assert all("lora" in name for name in expected)
    model.zero_grad()
    with Regularizer(model, vectors, RegularizerConfig(emotions=RULES, coef=0.5, layers=[2]), inject="autograd"):
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    _assert_same_grads(_grads(model), expected)


def _layer_outputs(model, input_ids, attention_mask):
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states


def test_interventions_set_projections_exactly_only_while_training(tiny_tokenizer):
    model = make_tiny_llama().double()
    vectors = make_bundle(model)
    input_ids, attention_mask, _ = _batch(tiny_tokenizer, "right")
    layer = 2
    config = RegularizerConfig(
        emotions={"desperate": {"mode": "ablate"}, "hostile": {"mode": "clamp", "clamp_low": -0.1, "clamp_high": 0.1},
                  "calm": {"mode": "steer", "steer_coef": 3.0}},
        layers=[layer],
    )
    before = _layer_outputs(model.eval(), input_ids, attention_mask)
    captured = {}
    handle = find_decoder_layers(model)[layer].register_forward_hook(
        lambda m, a, out: captured.__setitem__("h", out.detach().clone()))
    try:
        with Regularizer(model, vectors, config):
            model.train()
            model(input_ids=input_ids, attention_mask=attention_mask)
            model.eval()
            evaluated = _layer_outputs(model, input_ids, attention_mask)
    finally:
        handle.remove()
    # Forward hooks run in registration order; ours was added after the capture hook, so recompute the edit.
    h = before[layer + 1]
    mask = content_mask(attention_mask)
    stats = vectors.stats(layer)
    d_v, h_v, c_v = (vectors.direction(e, layer).double() for e in ("desperate", "hostile", "calm"))
    i_d, i_h = vectors.emotion_index("desperate"), vectors.emotion_index("hostile")
    V = torch.stack([d_v, h_v])
    p = h @ V.T
    low = torch.tensor([stats.mean[i_d], stats.mean[i_h] - 0.1 * stats.std[i_h]], dtype=torch.float64)
    high = torch.tensor([stats.mean[i_d], stats.mean[i_h] + 0.1 * stats.std[i_h]], dtype=torch.float64)
    target = torch.maximum(torch.minimum(p, high), low)
    expected = h + ((target - p) @ torch.linalg.inv(V @ V.T)) @ V * mask[..., None] + 3.0 * c_v * mask[..., None]
    # the model's later layers saw the edited state: check the edited hidden state via a fresh hooked run
    with Regularizer(model, vectors, config):
        model.train()
        got = {}
        handle = find_decoder_layers(model)[layer + 1].register_forward_pre_hook(
            lambda m, a: got.__setitem__("h", a[0].detach().clone()))
        try:
            model(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            handle.remove()
    torch.testing.assert_close(got["h"], expected, rtol=1e-6, atol=1e-6)
    edited = got["h"][mask]
    torch.testing.assert_close(edited @ d_v, torch.full((edited.shape[0],), float(stats.mean[i_d]),
                                                        dtype=torch.float64) + 3.0 * (c_v @ d_v), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["h"][~mask], h[~mask])  # sinks and padding untouched
    torch.testing.assert_close(captured["h"], h)  # the layer's own output is not modified in place
    for a, b in zip(before, evaluated):  # eval passes untouched while attached
        assert torch.equal(a, b)


def test_detached_model_is_bit_identical(tiny_tokenizer):
    model = make_tiny_llama().train()
    input_ids, attention_mask, labels = _batch(tiny_tokenizer)
    torch.manual_seed(0)
    reference = model(input_ids=input_ids, attention_mask=attention_mask).logits.detach()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = RegularizerConfig(emotions={"desperate": {"mode": "steer", "steer_coef": 5.0}}, layers=[1])
    reg = Regularizer(model, make_bundle(model), config).attach()
    steered = model(input_ids=input_ids, attention_mask=attention_mask).logits.detach()
    reg.detach()
    after = model(input_ids=input_ids, attention_mask=attention_mask).logits.detach()
    assert not torch.equal(reference, steered)
    assert torch.equal(reference, after)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks for layer in find_decoder_layers(model))
    assert not model._forward_pre_hooks and not model._forward_hooks and "generate" not in model.__dict__


def test_no_grad_and_eval_passes_add_no_penalty_and_no_metrics(tiny_tokenizer):
    model = make_tiny_llama().train()
    input_ids, attention_mask, _ = _batch(tiny_tokenizer)
    with Regularizer(model, make_bundle(model), RegularizerConfig(emotions=RULES, layers=[1])) as reg:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask)
        model.eval()
        model(input_ids=input_ids, attention_mask=attention_mask)
        assert float(reg.penalty()) == 0.0
        assert reg.metrics() == {"emoreg/coef": 0.1}


def test_generation_is_untouched_unless_configured(tiny_tokenizer):
    model = make_tiny_llama().train()
    input_ids, attention_mask, _ = _batch(tiny_tokenizer, "left")
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=5, do_sample=False,
                  pad_token_id=0)
    plain = model.generate(**kwargs)
    steer = {"desperate": {"mode": "steer", "steer_coef": 50.0}}
    with Regularizer(model, make_bundle(model), RegularizerConfig(emotions=steer, layers=[1])) as reg:
        with torch.enable_grad():
            assert torch.equal(model.generate(**kwargs), plain)
        assert reg.metrics() == {"emoreg/coef": 0.1}
    config = RegularizerConfig(emotions=steer, layers=[1], during_generation=True)
    with Regularizer(model, make_bundle(model), config):
        assert not torch.equal(model.generate(**kwargs), plain)


def test_metrics_match_a_manual_computation(tiny_tokenizer):
    model = make_tiny_llama().train()
    vectors = make_bundle(model)
    input_ids, attention_mask, _ = _batch(tiny_tokenizer)
    config = RegularizerConfig(emotions={"desperate": 2.0}, kind="hinge", layers=[3], log_emotions=["calm"])
    with Regularizer(model, vectors, config) as reg, LayerOutputs(model) as recorded:
        model(input_ids=input_ids, attention_mask=attention_mask)
        metrics = reg.metrics()
        assert reg.metrics() == {"emoreg/coef": 0.1}  # reset after reading
    h = recorded.outputs[3][content_mask(attention_mask)].detach()
    stats = vectors.stats(3)
    for emotion in ("desperate", "calm"):
        i = vectors.emotion_index(emotion)
        p = h @ vectors.direction(emotion, 3)
        assert metrics[f"emoreg/{emotion}/L3/projection"] == pytest.approx(float(p.mean()), rel=1e-5)
        assert metrics[f"emoreg/{emotion}/L3/z"] == pytest.approx(float(((p - stats.mean[i]) / stats.std[i]).mean()),
                                                                  rel=1e-4, abs=1e-5)
        above = float((p > stats.percentile(95)[i]).float().mean())
        assert metrics[f"emoreg/{emotion}/L3/frac_above_p95"] == pytest.approx(above)
    expected_penalty = float(hand_penalty(recorded.outputs, attention_mask, vectors, {"desperate": {
        "kind": "hinge", "weight": 2.0}}, [3]))
    assert metrics["emoreg/desperate/L3/penalty"] == pytest.approx(expected_penalty, rel=1e-4)
    assert "emoreg/calm/L3/penalty" not in metrics


def test_nan_activations_skip_the_penalty_with_a_warning(tiny_tokenizer):
    model = make_tiny_llama().train()
    input_ids, attention_mask, _ = _batch(tiny_tokenizer)
    layers = find_decoder_layers(model)
    poison = layers[1].register_forward_hook(lambda m, a, out: out * float("nan"))
    try:
        with Regularizer(model, make_bundle(model), RegularizerConfig(emotions=RULES, layers=[2])) as reg:
            with pytest.warns(UserWarning,
                              match=r"non-finite activations at layer 2 \(emotions \['desperate', 'hostile'\]\)"):
                model(input_ids=input_ids, attention_mask=attention_mask)
            assert float(reg.penalty()) == 0.0
            assert reg.metrics()["emoreg/nonfinite_skipped"] == 1.0
    finally:
        poison.remove()


def test_two_regularizers_cannot_share_a_model():
    model = make_tiny_llama()
    vectors = make_bundle(model)
    with Regularizer(model, vectors, RegularizerConfig(emotions=RULES)):
        with pytest.raises(ConfigError, match="already attached"):
            Regularizer(model, vectors, RegularizerConfig(emotions=RULES)).attach()
    with Regularizer(model, vectors, RegularizerConfig(emotions=RULES)) as reg:
        reg.attach()  # idempotent
        assert len([h for layer in find_decoder_layers(model) for h in layer._forward_hooks]) == 1


def test_bad_layers_and_emotions(tiny_tokenizer):
    model = make_tiny_llama()
    vectors = make_bundle(model)
    with pytest.raises(Exception, match="layer 0 is not in the bundle"):
        Regularizer(model, vectors, RegularizerConfig(emotions=RULES, layers=[0]))
    with pytest.raises(Exception, match="emotion 'smug' is not in the bundle"):
        Regularizer(model, vectors, RegularizerConfig(emotions={"smug": 1.0}))


def test_explicit_penalty_follows_the_schedule(tiny_tokenizer):
    model = make_tiny_llama().train()
    input_ids, attention_mask, _ = _batch(tiny_tokenizer)
    config = RegularizerConfig(emotions=RULES, layers=[1], coef=1.0, schedule="linear_warmup", warmup_steps=4)
    with Regularizer(model, make_bundle(model), config) as reg:
        assert reg.coef == 0.0
        reg.step()
        reg.step()
        assert reg.coef == 0.5
        model(input_ids=input_ids, attention_mask=attention_mask)
        value = reg.penalty()
        model(input_ids=input_ids, attention_mask=attention_mask)
        reg.set_step(4)
        assert float(reg.penalty()) == pytest.approx(2 * float(value), rel=1e-5)


def test_zero_ablation_sets_the_projection_to_zero(tiny_tokenizer):
    model = make_tiny_llama().double().train()
    vectors = make_bundle(model)
    input_ids, attention_mask, _ = _batch(tiny_tokenizer)
    config = RegularizerConfig(emotions={"hostile": {"mode": "ablate", "ablate_to": "zero"}}, layers=[1])
    got = {}
    with Regularizer(model, vectors, config):
        handle = find_decoder_layers(model)[2].register_forward_pre_hook(
            lambda m, a: got.__setitem__("h", a[0].detach().clone()))
        try:
            model(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            handle.remove()
    mask = content_mask(attention_mask)
    projection = got["h"] @ vectors.direction("hostile", 1).double()
    assert projection[mask].abs().max() < 1e-10
    assert projection[~mask].abs().min() > 0  # sinks and padding keep theirs


def test_gradient_scale_follows_an_fp16_loss_scale(tiny_tokenizer):
    """With a GradScaler the loss's gradient is multiplied by the scale; the injected penalty must be too."""
    model = make_tiny_llama().double().train()
    vectors = make_bundle(model)
    input_ids, attention_mask, labels = _batch(tiny_tokenizer)
    expected, _ = _reference_grads(model, input_ids, attention_mask, labels, vectors, RULES, [2], 0.25)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    model.zero_grad()
    with Regularizer(model, vectors, RegularizerConfig(emotions=RULES, coef=0.25, layers=[2]),
                     inject="autograd") as reg:
        reg.gradient_scale = float(scaler.get_scale())
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        scaler.scale(loss).backward()
    unscaled = {n: p.grad / 1024.0 for n, p in model.named_parameters() if p.grad is not None}
    _assert_same_grads(unscaled, expected)


def test_ablation_at_several_layers_holds_each_layers_projection_at_the_base_mean(tiny_tokenizer):
    """CAFT ablates at several layers at once: every listed layer's output has its own direction's
    projection set to the base-model mean on content tokens, while later layers see the edited state."""
    model = make_tiny_llama().double().train()
    vectors = make_bundle(model)
    input_ids, attention_mask, _ = _batch(tiny_tokenizer)
    layers = [1, 2]
    config = RegularizerConfig(emotions={"desperate": {"mode": "ablate"}}, layers=layers)
    got = {}
    decoder = find_decoder_layers(model)
    with Regularizer(model, vectors, config):
        handles = [decoder[layer + 1].register_forward_pre_hook(
            lambda m, a, layer=layer: got.__setitem__(layer, a[0].detach().clone())) for layer in layers]
        try:
            model(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            for handle in handles:
                handle.remove()
    mask = content_mask(attention_mask)
    index = vectors.emotion_index("desperate")
    for layer in layers:
        projection = got[layer] @ vectors.direction("desperate", layer).double()
        target = float(vectors.stats(layer).mean[index])
        torch.testing.assert_close(projection[mask], torch.full_like(projection[mask], target), rtol=0, atol=1e-9)
        assert (projection[~mask] - target).abs().min() > 1e-6  # sinks and padding keep theirs
    # the layer-2 edit acted on a state the layer-1 edit had already changed: without the layer-1 edit,
    # layer 2's input differs
    single = {}
    with Regularizer(model, vectors, RegularizerConfig(emotions={"desperate": {"mode": "ablate"}}, layers=[2])):
        handle = decoder[2].register_forward_pre_hook(lambda m, a: single.__setitem__("h", a[0].detach().clone()))
        try:
            model(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            handle.remove()
    assert not torch.allclose(single["h"], got[1])


@pytest.mark.parametrize("units", ["raw", "z"])
def test_steering_adds_its_coefficient_in_raw_or_z_units(tiny_tokenizer, units):
    """steer adds steer_coef * v (raw) or steer_coef * std * v (z: the projection moves by steer_coef
    base-model standard deviations) on content tokens only."""
    model = make_tiny_llama().double().train()
    vectors = make_bundle(model)
    input_ids, attention_mask, _ = _batch(tiny_tokenizer)
    layer = 1
    decoder = find_decoder_layers(model)

    def next_layer_input(config):
        got = {}
        handle = decoder[layer + 1].register_forward_pre_hook(lambda m, a: got.__setitem__("h", a[0].detach().clone()))
        try:
            if config is None:
                model(input_ids=input_ids, attention_mask=attention_mask)
            else:
                with Regularizer(model, vectors, config):
                    model(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            handle.remove()
        return got["h"]

    plain = next_layer_input(None)
    steer = {"mode": "steer", "steer_coef": 2.0, "units": units}
    steered = next_layer_input(RegularizerConfig(emotions={"calm": steer}, layers=[layer]))
    v = vectors.direction("calm", layer).double()
    scale = 2.0 * (float(vectors.stats(layer).std[vectors.emotion_index("calm")]) if units == "z" else 1.0)
    mask = content_mask(attention_mask)
    expected = plain + scale * v * mask[..., None]
    torch.testing.assert_close(steered, expected, rtol=0, atol=1e-6)  # the plan's steer vector is float32
    assert RegularizerConfig(emotions={"calm": {"mode": "steer", "steer_coef": 1.0, "units": units}}).needs_statistics \
        == (units == "z")
