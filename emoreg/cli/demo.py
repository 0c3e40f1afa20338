"""``emoreg demo``: fine-tune the embedded model with and without emoreg, evaluate, compare (CPU, offline)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="end-to-end demo on the embedded model: train without/with emoreg, evaluate, compare",
        description="Fine-tune the embedded SmolLM2-135M-Instruct on replies written in a desperate voice three "
                    "times (no emoreg, a standardised penalty, mean-ablation of the 'desperate' direction), "
                    "evaluate the base model and the three checkpoints (fine-tuning shift, held-out readings, "
                    "text-level emotion, distress rate, capability), and write a comparison report and "
                    "summary.json. Runs on CPU, offline, in about 20 minutes on 2 cores. Finished training "
                    "arms and eval suites are reused when the demo is run again with the same settings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("emoreg-demo"), help="output directory")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per training arm")
    parser.add_argument("--probe-limit", type=int, default=48, help="probe scenarios (and concealment prompts)")
    parser.add_argument("--capability-limit", type=int, default=40, help="items per capability data part")
    parser.add_argument("--seed", type=int, default=0, help="seed for training and evaluation")
    parser.add_argument("--no-cache", action="store_true", help="do not reuse cached eval results")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from emoreg.demo import DemoSettings, run_demo
    from emoreg.errors import ConfigError

    for name in ("steps", "probe_limit", "capability_limit"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    settings = DemoSettings(out_dir=args.out, max_steps=args.steps, probe_limit=args.probe_limit,
                            capability_limit=args.capability_limit, seed=args.seed, use_cache=not args.no_cache)
    run_demo(settings)
    return 0
