"""SFTTrainer + the KL anchor under DDP: one SGD step without and one with the anchor, from the same weights.

    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 --master_port PORT tests/distributed/ddp_kl_anchor.py \
        --out DIR --anchor FILE

Both runs start from ``start.pt`` (a tiny float64 Llama moved away from its reference ``reference.pt``, so the
KL has a gradient); the anchor copies its reference before the weights move. Rank 0 writes ``without.pt`` and
``with.pt`` (trained parameters), ``start.pt``, ``reference.pt``, ``log_history.json`` and ``world.json``; every
rank writes ``calls_rank<r>.json`` (its anchor-call count and the stream batches it took).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

if __name__ == "__main__":  # launched as a file: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from tests.distributed.common import full_parameters, rank_and_world, sft_trainer, text_dataset, write_json

GA = 2
COEF = 0.5


def anchor_settings(anchor: Path) -> dict:
    """The KL-anchor config of both the launched run and the test's hand computation."""
    return {"coef": COEF, "examples": str(anchor), "batch_size": 2, "max_length": 96, "max_new_tokens": 6}


def perturbed(model, seed: int = 1, scale: float = 0.05):
    moved = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in moved.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return moved


def run(out: Path, anchor: Path) -> None:
    from emoreg.integrations import attach_kl_anchor
    from tests.tiny_models import make_tiny_llama

    out.mkdir(parents=True, exist_ok=True)
    reference = make_tiny_llama().double()
    start = perturbed(reference)
    without = sft_trainer(out / "without", copy.deepcopy(start), text_dataset(), per_device=2, ga=GA, steps=1)
    without.train()
    trainer = sft_trainer(out / "with", copy.deepcopy(reference), text_dataset(), per_device=2, ga=GA, steps=1)
    callback = attach_kl_anchor(trainer, anchor_settings(anchor))
    trainer.model.load_state_dict(start.state_dict())
    trainer.train()
    rank, world = rank_and_world()
    taken = [c * callback.anchor.world_size + callback.anchor.rank for c in range(callback.anchor.calls)]
    write_json(out / f"calls_rank{rank}.json", {"calls": callback.anchor.calls, "batches": taken})
    params_without, params_with = full_parameters(without), full_parameters(trainer)
    if trainer.accelerator.is_main_process:
        torch.save(params_without, out / "without.pt")
        torch.save(params_with, out / "with.pt")
        torch.save(start.state_dict(), out / "start.pt")
        torch.save(reference.state_dict(), out / "reference.pt")
        write_json(out / "log_history.json", trainer.state.log_history)
        write_json(out / "world.json", {"world_size": world,
                                        "distributed_type": str(trainer.accelerator.distributed_type)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--anchor", type=Path, required=True)
    args = parser.parse_args()
    run(args.out, args.anchor)


if __name__ == "__main__":
    main()
