"""SFTTrainer + emoreg.attach on a tiny Llama, under DDP or on one process.

    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 --master_port PORT tests/distributed/ddp_sft.py \
        --out DIR --per-device 2 --ga 2 --steps 2
    python tests/distributed/ddp_sft.py --out DIR --per-device 4 --ga 2 --steps 2     # the same data on one rank

Prompt-completion data with ``selection="completion"`` (see common.prompt_completion_dataset). Every rank writes
``DIR/batches_rank<r>.pt`` (the micro-batches it fed the model, in order); rank 0 writes ``DIR/log_history.json``,
``DIR/params.pt`` (trained parameters) and ``DIR/world.json``.
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
    full_parameters,
    prompt_completion_dataset,
    rank_and_world,
    sft_trainer,
    write_json,
)


def run(out: Path, *, per_device: int, ga: int, steps: int) -> None:
    from emoreg.integrations import attach
    from tests.regularizer_helpers import make_bundle
    from tests.tiny_models import make_tiny_llama
    from tests.trainer_harness import MicroBatchRecorder

    out.mkdir(parents=True, exist_ok=True)
    model = make_tiny_llama()
    vectors = make_bundle(model)
    trainer = sft_trainer(out / "trainer", model, prompt_completion_dataset(), per_device=per_device, ga=ga,
                          steps=steps)
    attach(trainer, vectors, emoreg_config(selection="completion"))
    recorder = MicroBatchRecorder(trainer.model)
    try:
        trainer.train()
    finally:
        recorder.remove()
    rank, world = rank_and_world()
    assert trainer.accelerator.num_processes == world, (trainer.accelerator.num_processes, world)
    torch.save(recorder.batches, out / f"batches_rank{rank}.pt")
    params = full_parameters(trainer)
    if trainer.accelerator.is_main_process:
        torch.save(params, out / "params.pt")
        write_json(out / "log_history.json", trainer.state.log_history)
        write_json(out / "world.json", {"world_size": world,
                                        "distributed_type": str(trainer.accelerator.distributed_type)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-device", type=int, default=2)
    parser.add_argument("--ga", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    run(args.out, per_device=args.per_device, ga=args.ga, steps=args.steps)


if __name__ == "__main__":
    main()
