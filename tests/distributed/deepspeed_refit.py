"""SFTTrainer + emoreg.attach with adaptive directions (``refit``) under DeepSpeed ZeRO (CPU, gloo).

    DS_ACCELERATOR=cpu accelerate launch --config_file ZERO_CPU.yaml --main_process_port PORT \
        tests/distributed/deepspeed_refit.py --out DIR

Refits every step for 2 steps (at steps 0, 1 and 2): each refit is a forward of every rank over the refit texts,
collective under ZeRO-3 (a rank that skipped it would hang the others). Every rank writes
``DIR/refit_rank<r>.pt``: the steps it refitted at, its refitted directions at step 0 (before any update) and at
the end. Rank 0 writes ``DIR/log.json`` and ``DIR/engine.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__":  # launched as a file: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from tests.distributed.common import (
    emoreg_config,
    rank_and_world,
    sft_trainer,
    skip_deepspeed_shm_build,
    text_dataset,
    write_json,
)

#: Small texts keep the refit read quick; every step is a refit.
REFIT = {"every": 1, "texts_per_emotion": 3, "max_length": 40}


def _directions(regularizer) -> dict[str, torch.Tensor]:
    return {f"L{layer}/{emotion}": fitted.direction.clone()
            for layer, by in regularizer.refit_directions.items() for emotion, fitted in by.items()}


def run(out: Path) -> None:
    import transformers

    from emoreg.integrations import attach
    from emoreg.regularization import Regularizer
    from tests.regularizer_helpers import make_bundle
    from tests.tiny_models import make_tiny_llama

    out.mkdir(parents=True, exist_ok=True)
    rank, _ = rank_and_world()
    steps: list[int] = []
    original = Regularizer.refit

    def refit(self, step=None):
        steps.append(step)
        return original(self, step)

    Regularizer.refit = refit
    model = make_tiny_llama()
    trainer = sft_trainer(out / "trainer", model, text_dataset(), per_device=2, ga=1, steps=2, learning_rate=1e-3)
    callback = attach(trainer, make_bundle(model), {**emoreg_config(selection="all"), "refit": REFIT})
    seen: dict[str, dict[str, torch.Tensor]] = {}

    class Capture(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            seen.setdefault("step0", _directions(callback.regularizer))

    trainer.add_callback(Capture())
    trainer.train()
    torch.save({"steps": steps, "step0": seen["step0"], "final": _directions(callback.regularizer),
                "partitioned": any(hasattr(p, "ds_id") for p in trainer.model.parameters())},
               out / f"refit_rank{rank}.pt")
    if trainer.accelerator.is_main_process:
        engine = trainer.model_wrapped
        write_json(out / "log.json", trainer.state.log_history)
        write_json(out / "engine.json", {"engine": type(engine).__name__,
                                         "zero_stage": int(engine.zero_optimization_stage()),
                                         "world_size": int(trainer.accelerator.num_processes)})
    trainer.accelerator.wait_for_everyone()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    skip_deepspeed_shm_build()
    run(args.out)


if __name__ == "__main__":
    main()
