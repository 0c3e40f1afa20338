"""Pieces shared by the distributed launch scripts (run under torchrun / accelerate launch) and their tests.

The scripts in this folder are not collected by pytest; tests/test_distributed.py launches them with
2 CPU ranks on gloo and checks what they write. Every rank builds the same tiny model (fixed seed), records
the micro-batches its model really received (tests/trainer_harness.py::MicroBatchRecorder) and writes them to
``batches_<case>_rank<r>.pt``; rank 0 also writes the trainer's ``log_history`` and the full trained
parameters, so the test process can recompute everything by hand on one process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from tests.regularizer_helpers import LayerOutputs, content_mask

#: The regularised emotions: a raw square penalty (large, smooth gradient) and a z-unit hinge.
RULES = {"desperate": {"weight": 1.0}, "hostile": {"weight": 0.5, "kind": "hinge"}}
LAYERS = [1, 2]
LOG_EMOTIONS = ["calm"]  # logged, not regularised
COEF = 0.5


def emoreg_config(selection: str = "all", coef: float = COEF) -> dict[str, Any]:
    return {"emotions": RULES, "layers": LAYERS, "coef": coef, "selection": selection, "log_emotions": LOG_EMOTIONS}


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


# ----------------------------------------------------------------------------------------------- data


def text_dataset(n: int = 16):
    """Plain-text SFT rows of different lengths (padding in every batch)."""
    from datasets import Dataset

    return Dataset.from_dict({"text": [f"story {i}: the build failed and the deadline is "
                                       + "tomorrow " * (i % 4 + 1) for i in range(n)]})


def prompt_completion_dataset(n: int = 16):
    """Prompt-completion rows: prompts of different lengths, completions of one length.

    With ``selection="completion"`` every row contributes the same number of penalised tokens
    (the completion and its EOS), whichever rows a rank draws.
    """
    from datasets import Dataset

    prompts = [f"q{i}: why did the build fail" + "?" * (i % 5) for i in range(n)]
    completions = [f" because of bug {i:02d}" for i in range(n)]
    return Dataset.from_dict({"prompt": prompts, "completion": completions})


# ----------------------------------------------------------------------------------------------- trainer


def sft_trainer(output_dir: Path, model, dataset, *, per_device: int, ga: int, steps: int, **overrides):
    """An SFTTrainer taking plain SGD steps (lr 1, no clipping, no weight decay) on the CPU."""
    import trl

    from tests.tiny_models import make_tiny_tokenizer
    from tests.trainer_harness import SGD_ARGS

    settings = {**SGD_ARGS, "max_steps": steps, "gradient_checkpointing": False, **overrides}
    args = trl.SFTConfig(output_dir=str(output_dir), per_device_train_batch_size=per_device,
                         gradient_accumulation_steps=ga, **settings)
    return trl.SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=make_tiny_tokenizer())


def skip_deepspeed_shm_build() -> None:
    """Don't JIT-compile DeepSpeed's CPU shared-memory all-reduce op (~25 s on a fresh machine).

    Without it DeepSpeed's CPU accelerator all-reduces with plain gloo (tests/test_layout.py does the same).
    """
    import importlib

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def full_parameters(trainer) -> dict[str, torch.Tensor]:
    """Every parameter of the trained model, gathered from ZeRO-3 partitions when needed (call on all ranks)."""
    from emoreg.models.layout import unwrap_model

    model = unwrap_model(trainer.model)
    params = list(model.named_parameters())
    if any(hasattr(p, "ds_id") for _, p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            return {n: p.detach().clone().cpu() for n, p in params}
    return {n: p.detach().clone().cpu() for n, p in params}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")


# ----------------------------------------------------------------------------------------------- by hand


def _rule_values(p: torch.Tensor, z: torch.Tensor, spec: dict, stats, i: int) -> torch.Tensor:
    """Per-token penalty of one emotion (square on raw projections, or hinge on z)."""
    kind = spec.get("kind", "square")
    if kind == "square":
        return (z if spec.get("units", "raw") == "z" else p) ** 2
    if kind == "hinge":
        threshold = (stats.percentile(95)[i] - stats.mean[i]) / stats.std[i]
        return torch.relu(z - threshold.to(z.dtype)) ** 2
    raise ValueError(f"no hand formula for kind {kind!r}")


@torch.no_grad()
def hand_metrics(model0, batches, vectors, rules=RULES, layers=LAYERS, log_emotions=LOG_EMOTIONS,
                 selection: str = "all") -> dict[str, float]:
    """The ``emoreg/`` metrics one log entry should hold for these micro-batches, computed from scratch.

    Sums over every micro-batch (of every rank), divided by the total token count, as one rank would log.
    """
    model = model0.train()
    sums: dict[str, float] = {}
    counts = dict.fromkeys(layers, 0)
    watched = list(dict.fromkeys(list(rules) + list(log_emotions)))
    for batch in batches:
        with LayerOutputs(model) as recorded:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        mask = content_mask(batch["attention_mask"])
        if selection == "completion":
            mask = mask & (batch["labels"] != -100)
        for layer in layers:
            h = recorded.outputs[layer][mask].double()
            counts[layer] += h.shape[0]
            stats = vectors.stats(layer)
            for emotion in watched:
                i = vectors.emotion_index(emotion)
                p = h @ vectors.direction(emotion, layer).double()
                z = (p - stats.mean[i].double()) / stats.std[i].double()
                above = (p > stats.percentile(95)[i].double()).double()
                for name, value in (("projection", p), ("z", z), ("frac_above_p95", above)):
                    key = f"emoreg/{emotion}/L{layer}/{name}"
                    sums[key] = sums.get(key, 0.0) + float(value.sum())
                if emotion in rules:
                    spec = rules[emotion]
                    key = f"emoreg/{emotion}/L{layer}/penalty"
                    value = spec.get("weight", 1.0) * _rule_values(p, z, spec, stats, i).sum()
                    sums[key] = sums.get(key, 0.0) + float(value)
    out = {key: total / counts[int(key.split("/L")[1].split("/")[0])] for key, total in sums.items()}
    out.update({f"emoreg/L{layer}/tokens": float(count) for layer, count in counts.items()})
    return out


def strip_padding(batch: dict[str, torch.Tensor]) -> list[tuple[int, ...]]:
    """The real token ids of each row of a micro-batch (padding removed), to compare what ranks saw."""
    return [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
