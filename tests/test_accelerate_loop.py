"""Hand-written training loops with ``with Regularizer(...) as reg``: Accelerate and plain PyTorch.

Each loop trains a float64 tiny Llama for several SGD steps (lr 0.1) with gradient accumulation and a
``linear_decay`` coefficient schedule advanced by ``reg.step()`` after every optimizer step. A reference
replays the same micro-batches on a copy of the initial model with the objective written out by hand:
per micro-batch ``(loss + coef_k * R) / GA`` (``R`` from tests/regularizer_helpers.py::hand_penalty, ``coef_k``
the schedule's value at optimizer step ``k`` computed here, not by emoreg), summed over the window, one SGD
step per window. The trained parameters must match, and so must the metrics ``reg.metrics()`` reports.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from emoreg.models.layout import find_decoder_layers
from emoreg.regularization import Regularizer, RegularizerConfig
from tests.distributed.common import LAYERS, LOG_EMOTIONS, RULES, hand_metrics
from tests.regularizer_helpers import LayerOutputs, content_mask, hand_penalty, make_bundle
from tests.tiny_models import make_tiny_llama, make_tiny_tokenizer

accelerate = pytest.importorskip("accelerate")

COEF = 0.5
LR = 0.1  # lr 1 diverges over 8 steps with a raw square penalty
BATCH = 2
N_SAMPLES = 16  # 8 micro-batches: 8 optimizer steps with GA 1, 2 with GA 4


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; start and leave every test with none."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _loader() -> DataLoader:
    tokenizer = make_tiny_tokenizer()
    texts = [f"note {i}: everything is fine, " + "really " * (i % 5) + "fine" for i in range(N_SAMPLES)]

    def collate(rows):
        enc = tokenizer(rows, return_tensors="pt", padding=True)
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}

    return DataLoader(texts, batch_size=BATCH, shuffle=False, collate_fn=collate)


def _config(total_steps: int) -> RegularizerConfig:
    return RegularizerConfig(emotions=RULES, layers=LAYERS, coef=COEF, schedule="linear_decay",
                             total_steps=total_steps, log_emotions=LOG_EMOTIONS)


def _hand_coef(step: int, total_steps: int) -> float:
    return COEF * (1.0 - step / total_steps)


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _clone(batch):
    return {k: v.detach().clone() for k, v in batch.items()}


def _accelerate_loop(model, vectors, ga, inject):
    """The README's loop: ``accumulate``, ``loss + reg.penalty()``, ``accelerator.backward``, ``reg.step()``."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=ga)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    model, optimizer, loader = accelerator.prepare(model, optimizer, _loader())
    total_steps = len(loader) // ga
    seen, logged = [], []
    with Regularizer(model, vectors, _config(total_steps), inject=inject) as reg:
        if inject == "autograd":
            reg.gradient_scale = 1.0 / accelerator.gradient_accumulation_steps  # accelerate divides the loss by GA
        for batch in loader:
            seen.append(_clone(batch))
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                if inject == "explicit":
                    loss = loss + reg.penalty()
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                logged.append(reg.metrics())  # the coef logged is the one this step used
                reg.step()
    assert all(not layer._forward_hooks for layer in find_decoder_layers(model))
    return accelerator.unwrap_model(model), seen, logged


def _torch_loop(model, vectors, ga, inject):
    """A plain PyTorch loop: the caller divides the whole objective by GA."""
    assert inject == "explicit"
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loader = _loader()
    total_steps = len(loader) // ga
    seen, logged = [], []
    with Regularizer(model, vectors, _config(total_steps)) as reg:
        for i, batch in enumerate(loader):
            seen.append(_clone(batch))
            loss = model(**batch).loss + reg.penalty()
            (loss / ga).backward()
            if (i + 1) % ga == 0:
                optimizer.step()
                optimizer.zero_grad()
                logged.append(reg.metrics())
                reg.step()
    return model, seen, logged


def _reference(model0, batches, vectors, ga, coef_of_step):
    """Replay ``batches`` with the objective written out: sum_i (loss_i + coef_k R_i) / GA, then SGD."""
    model = copy.deepcopy(model0).train()
    for k in range(len(batches) // ga):
        model.zero_grad()
        for batch in batches[k * ga:(k + 1) * ga]:
            with LayerOutputs(model) as recorded:
                loss = model(**batch).loss
            r = hand_penalty(recorded.outputs, batch["attention_mask"], vectors, RULES, LAYERS)
            ((loss + coef_of_step(k) * r) / ga).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= LR * p.grad
    return _params(model)


@pytest.mark.parametrize(
    "loop, inject",
    [("accelerate", "explicit"), ("accelerate", "autograd"), ("torch", "explicit")],
)
@pytest.mark.parametrize("ga", [1, 4])
def test_loop_update_equals_the_hand_objective(loop, inject, ga):
    base = make_tiny_llama().double().train()
    vectors = make_bundle(base)
    model = copy.deepcopy(base)
    run = _accelerate_loop if loop == "accelerate" else _torch_loop
    trained, batches, logged = run(model, vectors, ga, inject)

    steps = len(batches) // ga
    assert len(batches) == N_SAMPLES // BATCH and len(logged) == steps
    expected = _reference(base, batches, vectors, ga, lambda k: _hand_coef(k, steps))
    actual = _params(trained)
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-9, atol=1e-11, msg=name)

    # The penalty matters: without it (or with a constant coefficient) the parameters end elsewhere.
    for other in (lambda k: 0.0, lambda k: COEF):
        alternative = _reference(base, batches, vectors, ga, other)
        assert max(float((alternative[n] - actual[n]).abs().max()) for n in actual) > 1e-6

    # Metrics: one report per optimizer step, over that step's micro-batches; coef follows the schedule.
    for k, metrics in enumerate(logged):
        window = batches[k * ga:(k + 1) * ga]
        tokens = sum(int(content_mask(b["attention_mask"]).sum()) for b in window)
        assert metrics["emoreg/coef"] == pytest.approx(_hand_coef(k, steps), rel=1e-12)
        assert all(metrics[f"emoreg/L{layer}/tokens"] == tokens for layer in LAYERS)
    first = hand_metrics(copy.deepcopy(base), batches[:ga], vectors)
    assert set(first) <= set(logged[0])
    for key, value in first.items():
        assert logged[0][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_accelerate_loop_leaves_no_hooks_after_an_exception():
    from accelerate import Accelerator

    model = make_tiny_llama().train()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = accelerator.prepare(model)
    batch = next(iter(_loader()))
    with pytest.raises(RuntimeError, match="stop"):
        with Regularizer(model, make_bundle(model), _config(4)) as reg:
            loss = model(**batch).loss + reg.penalty()
            raise RuntimeError("stop")
    assert loss.requires_grad
    assert all(not layer._forward_hooks for layer in find_decoder_layers(model))
    assert all(not m._forward_pre_hooks for m in model.modules())
