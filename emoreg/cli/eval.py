"""``emoreg eval``: run eval suites on a model or checkpoint and print a table of the metrics."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from emoreg.cli.common import add_data_argument, add_runtime_arguments, parse_data_specs, safe_name
from emoreg.errors import ConfigError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model or checkpoint: emotion probes, failure modes, capability",
        description="Run eval suites on MODEL ('default', a hub id, a model directory, a .gguf file, a PEFT "
                    "adapter or a Trainer checkpoint) and write results.json and records.jsonl. Results are "
                    "cached per suite; an interrupted run resumes where it stopped.",
    )
    parser.add_argument("model", nargs="?", help="the model or checkpoint to evaluate")
    parser.add_argument("--suites", default="all",
                        help="comma-separated suites or 'all' (default: %(default)s); see --list-suites")
    parser.add_argument("--list-suites", action="store_true", help="describe every suite and its data format")
    parser.add_argument("--vectors", default="default",
                        help="emotion-vector bundle directory or 'default' (default: %(default)s)")
    parser.add_argument("--base", help="base model for KL and concealment (default: the base the checkpoint "
                                       "records; 'none' for no base)")
    add_data_argument(parser)
    parser.add_argument("--limit", type=int, help="at most N items per data part (a seeded random subset)")
    parser.add_argument("--seed", type=int, default=0, help="seed for item subsets and sampling (default: 0)")
    parser.add_argument("--judge", default="rule", help="rule, hf:MODEL or openai:MODEL (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int,
                        help="cap on tokens per generated reply (default: each suite's own length: probes 64, "
                             "sycophancy 64, expression 80, misalignment 160, blackmail 256, reward_hacking 384)")
    parser.add_argument("--out", help="output directory (default: evals/<model name>)")
    parser.add_argument("--cache-dir", help="cache root (default: $EMOREG_CACHE/evals)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    add_runtime_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(run=run)


def default_out_dir(model: str) -> Path:
    """``evals/<last path component of the model reference, made filename-safe>``."""
    name = Path(model.rstrip("/\\")).name or "model"
    if name.lower().endswith(".gguf"):
        name = name[:-5]
    return Path("evals") / safe_name(name)


def run(args: argparse.Namespace) -> int:
    if args.list_suites:
        print(describe_suites())
        return 0
    if not args.model:
        raise ConfigError("give the MODEL to evaluate ('default', a hub id, a directory, a .gguf file or a "
                          "checkpoint), or --list-suites")
    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be positive, got {value}")
    from emoreg.evals.outputs import RECORDS_FILE, RESULTS_FILE
    from emoreg.evals.runner import evaluate_model
    from emoreg.evals.suites import parse_suite_names

    suites = parse_suite_names(args.suites)
    out_dir = Path(args.out) if args.out else default_out_dir(args.model)
    results = evaluate_model(
        args.model, suites=suites, out_dir=out_dir, vectors=args.vectors, base=args.base,
        data=parse_data_specs(args.data), limit=args.limit, seed=args.seed, judge=args.judge,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, cache_dir=args.cache_dir,
        dtype=args.dtype, device=args.device, progress=not args.no_progress, use_cache=not args.no_cache,
    )
    print(format_table(results))
    print(f"\nWrote {out_dir / RESULTS_FILE} and {out_dir / RECORDS_FILE}")
    return 0


def describe_suites() -> str:
    """Each suite's description, data parts (built-in files) and data format."""
    from emoreg.evals.suites import SUITE_NAMES, suite_class

    blocks = []
    for name in SUITE_NAMES:
        try:
            cls = suite_class(name)
        except ConfigError as exc:
            blocks.append(f"{name}\n  (unavailable: {exc})")
            continue
        needs = [what for what, flag in (("an emotion-vector bundle", cls.requires_vectors),
                                         ("a judge", cls.uses_judge)) if flag]
        lines = [name, f"  {cls.description}"]
        if needs:
            lines.append(f"  needs: {' and '.join(needs)}")
        for i, (part, file) in enumerate(cls.data_parts.items()):
            flag = f"--data {name}=PATH" if i == 0 else f"--data {name}.{part}=PATH"
            lines.append(f"  data part {part!r}: built-in {file} ({flag})")
        if cls.data_format:
            lines.append(f"  format: {cls.data_format}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table: suite, metric, value, 95% CI, n (one row per metric)."""
    rows = [("suite", "metric", "value", "95% CI", "n")]
    for suite, entry in results.get("suites", {}).items():
        for metric, values in entry.get("metrics", {}).items():
            ci = values.get("ci") or [math.nan, math.nan]
            rows.append((suite, metric, _number(values.get("value")), f"[{_number(ci[0])}, {_number(ci[1])}]",
                         str(values.get("n", ""))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "nan"
    return f"{number:.4g}"
