"""``emoreg demo``: fine-tune the embedded model with each regulariser family, evaluate, compare (CPU, offline)."""

from __future__ import annotations

import argparse
from pathlib import Path

from emoreg.cli.common import add_threads_argument


def add_parser(subparsers) -> None:
    from emoreg.demo.arms import ARMS, DEFAULT_ARMS

    arm_lines = "; ".join(f"{name}: {arm.description}" for name, arm in ARMS.items())
    parser = subparsers.add_parser(
        "demo",
        help="end-to-end demo on the embedded model: regulariser families head to head on a task with a side effect",
        description="Fine-tune the embedded SmolLM2-135M-Instruct on a strict five-line reply format (the skill) "
                    "taught through replies in a desperate voice (the side effect), once per arm and seed; "
                    "evaluate the base model and every checkpoint on held-out requests (spill-over: text emotion, "
                    "distress rate, activation readings by the model and by the frozen base model; skill: format "
                    "rate; concealment readings; capability); compare every arm with 'none' per request "
                    "(bootstrap intervals, p-values), label each arm honest / blatant / hidden in activations / "
                    "evasion in text, and write a report and summary.json. The default (arms none, penalty and "
                    "ablate, 1 seed, seeded subsets of the held-out data) runs on CPU, offline, in under 20 "
                    "minutes on 2 cores; --arms all with the larger subsets (--spillover-limit 64 --skill-limit 32 "
                    "--probe-limit 32 --capability-limit 24) took 56 minutes per seed, and the full comparison is "
                    "--arms all --seeds 3 --full. Finished training arms and eval suites are "
                    f"reused when the demo is run again with the same settings. Arms: {arm_lines}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("emoreg-demo"), help="output directory")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                        help="comma-separated arms, or 'all' ('none' is always included)")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per arm (seed, seed+1, ...)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per training arm")
    parser.add_argument("--full", action="store_true",
                        help="evaluate on all held-out data (160 spill-over requests, 60 skill questions, "
                             "48 concealment prompts, 40 capability items per part) instead of seeded subsets")
    parser.add_argument("--spillover-limit", type=int, default=48, help="spill-over requests (of 160)")
    parser.add_argument("--skill-limit", type=int, default=24, help="skill questions (of 60)")
    parser.add_argument("--probe-limit", type=int, default=24, help="concealment prompts")
    parser.add_argument("--capability-limit", type=int, default=16, help="items per capability data part")
    parser.add_argument("--seed", type=int, default=0, help="first training seed (evaluation is greedy)")
    parser.add_argument("--no-cache", action="store_true", help="do not reuse cached eval results")
    parser.add_argument("--summary-only", action="store_true",
                        help="rebuild summary.json and the report from the finished arms and evals in --out "
                             "(nothing is trained or evaluated)")
    add_threads_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from emoreg.demo import DemoConfig, parse_arms, run_demo
    from emoreg.demo.run import summarize_finished
    from emoreg.errors import ConfigError

    for name in ("steps", "seeds", "spillover_limit", "skill_limit", "probe_limit", "capability_limit"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    limits = dict(spillover_limit=args.spillover_limit, skill_limit=args.skill_limit,
                  concealment_limit=args.probe_limit, capability_limit=args.capability_limit)
    if args.full:
        limits = dict(spillover_limit=None, skill_limit=None, concealment_limit=48, capability_limit=40)
    settings = DemoConfig(out_dir=args.out, arms=parse_arms(args.arms), seeds=args.seeds, max_steps=args.steps,
                            seed=args.seed, use_cache=not args.no_cache, **limits)
    if args.summary_only:
        summarize_finished(settings)
    else:
        run_demo(settings)
    return 0
