"""SFTTrainer on a tiny Llama under DeepSpeed ZeRO (CPU, gloo), once without and once with emoreg.attach.

    DS_ACCELERATOR=cpu accelerate launch --config_file ZERO_CPU.yaml --main_process_port PORT \
        tests/distributed/deepspeed_sft.py --out DIR --ga 2

Both runs take one SGD step (lr 1, no clipping, no weight decay) from the same initial weights on the same
micro-batches, so ``without - with`` is the penalty's share of the update. For each case every rank writes
``DIR/batches_<case>_rank<r>.pt``; rank 0 writes ``DIR/params_<case>.pt`` (full parameters, gathered from
the ZeRO-3 partitions), ``DIR/log_<case>.json``, ``DIR/initial.pt`` and ``DIR/engine.json`` (what DeepSpeed
really ran: ZeRO stage, optimizer classes, gradient accumulation and clipping).
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
    rank_and_world,
    sft_trainer,
    skip_deepspeed_shm_build,
    text_dataset,
    write_json,
)


def _engine_facts(trainer) -> dict:
    engine = trainer.model_wrapped
    optimizer = getattr(engine, "optimizer", None)
    inner = getattr(optimizer, "optimizer", None)
    return {
        "engine": type(engine).__name__,
        "zero_stage": int(engine.zero_optimization_stage()),
        "optimizer": type(optimizer).__name__,
        "inner_optimizer": type(inner).__name__ if inner is not None else None,
        "gradient_accumulation_steps": int(engine.gradient_accumulation_steps()),
        "gradient_clipping": float(engine.gradient_clipping() or 0.0),
        "world_size": int(trainer.accelerator.num_processes),
        "dtype": str(next(trainer.model.parameters()).dtype),
    }


def run(out: Path, *, ga: int, per_device: int = 2) -> None:
    from emoreg.integrations import attach
    from tests.regularizer_helpers import make_bundle
    from tests.tiny_models import make_tiny_llama
    from tests.trainer_harness import MicroBatchRecorder

    out.mkdir(parents=True, exist_ok=True)
    rank, _ = rank_and_world()
    for case in ("without", "with"):
        model = make_tiny_llama()
        vectors = make_bundle(model)
        if rank == 0 and case == "without":
            torch.save({n: p.detach().clone() for n, p in model.named_parameters()}, out / "initial.pt")
        trainer = sft_trainer(out / f"trainer_{case}", model, text_dataset(), per_device=per_device, ga=ga, steps=1)
        if case == "with":
            attach(trainer, vectors, emoreg_config(selection="all"))
        recorder = MicroBatchRecorder(trainer.model)
        try:
            trainer.train()
        finally:
            recorder.remove()
        torch.save(recorder.batches, out / f"batches_{case}_rank{rank}.pt")
        params = full_parameters(trainer)  # collective under ZeRO-3: every rank takes part
        if trainer.accelerator.is_main_process:
            torch.save(params, out / f"params_{case}.pt")
            write_json(out / f"log_{case}.json", trainer.state.log_history)
            write_json(out / "engine.json", _engine_facts(trainer))
        trainer.accelerator.wait_for_everyone()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ga", type=int, default=2)
    parser.add_argument("--per-device", type=int, default=2)
    args = parser.parse_args()
    skip_deepspeed_shm_build()
    run(args.out, ga=args.ga, per_device=args.per_device)


if __name__ == "__main__":
    main()
