"""``emoreg compare``: evaluate a base model and checkpoints, then write comparison tables, plots and a report.

``emoreg compare BASE CKPT [CKPT ...] --out DIR`` evaluates every model with
:func:`emoreg.evals.runner.evaluate_model` into ``DIR/evals/<label>/`` (labels: ``base``, then the checkpoint
directory names made unique), checkpoints with ``base=BASE`` so KL and concealment compare against it (the base
itself with ``base="none"`` and without the concealment suite), and writes the report into ``DIR``.
``emoreg compare --from-evals DIR [DIR ...] --out OUT`` builds the report from existing eval output directories
(the first is the base) without loading any model.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

from emoreg.cli.common import add_data_argument, add_runtime_arguments, parse_data_specs, parse_names, safe_name
from emoreg.errors import ConfigError

logger = logging.getLogger(__name__)

#: Suites that need a base model to compare against; the base model itself is evaluated without them.
BASE_ONLY_SUITES = ("concealment",)
#: ``base`` for the base model's own evaluation: the runner's "no base model" (not the base its files record).
BASE_NONE = "none"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare checkpoints against a base model: tables, plots, HTML report",
        description="Evaluate a base model and checkpoints (or read existing eval outputs with --from-evals) and "
                    "write comparison.md/.csv/.json, PNG plots and a self-contained report.html.")
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="the base model ('default', a hub id or a directory), then one or more checkpoints")
    parser.add_argument("--from-evals", nargs="+", metavar="DIR", default=None,
                        help="existing eval output directories (results.json + records.jsonl); the first is the base")
    parser.add_argument("--out", required=True, help="output directory for the report (evals go to OUT/evals/)")
    parser.add_argument("--labels", default=None,
                        help="comma-separated labels for the models, in order (default: base, then directory names)")
    parser.add_argument("--suites", default="all", help="comma-separated suite names, or 'all' (default: %(default)s)")
    parser.add_argument("--vectors", default=None,
                        help="vector bundle: 'default' or a path (default: 'default' when evaluating; with "
                             "--from-evals, the bundle named in the base's results.json)")
    parser.add_argument("--target-emotions", default=None,
                        help="comma-separated emotions for the shift columns (default: the checkpoints' regularised "
                             "emotions, else the 5 with the largest shift)")
    parser.add_argument("--limit", type=int, default=None, help="at most N items per suite part (seeded subset)")
    parser.add_argument("--seed", type=int, default=0, help="seed for item subsets and sampling (default: %(default)s)")
    parser.add_argument("--judge", default="rule", help="rule, hf:<model> or openai:<model> (default: %(default)s)")
    add_data_argument(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="default: %(default)s")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens per reply")
    parser.add_argument("--cache-dir", default=None, help="eval cache directory (default: $EMOREG_CACHE/evals)")
    add_runtime_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from emoreg.compare.report import load_eval_dir, write_report

    out = Path(args.out)
    targets = parse_names(args.target_emotions, "--target-emotions")
    if args.from_evals:
        if args.models:
            raise ConfigError("give either models to evaluate or --from-evals directories, not both "
                              f"(got models {args.models})")
        labels = _labels(args.labels, [Path(d).resolve().name for d in args.from_evals], base_label=None)
        models = [load_eval_dir(directory, label) for directory, label in zip(args.from_evals, labels)]
    else:
        if len(args.models) < 2:
            raise ConfigError("compare needs a base model and at least one checkpoint: emoreg compare BASE CKPT "
                              "[CKPT ...] --out DIR (or --from-evals DIR DIR ...)")
        models = _evaluate_all(args, out)
    report = write_report(models, out, vectors=args.vectors, target_emotions=targets)
    print(f"wrote {report['files']['report.html']}")
    print(Path(report["files"]["comparison.md"]).read_text(encoding="utf-8").split("\n## ", 1)[0].rstrip())
    return 0


def _evaluate_all(args: argparse.Namespace, out: Path) -> list[Any]:
    """Run evaluate_model on the base and every checkpoint; return their outputs as ModelEvals."""
    from emoreg.compare.report import load_eval_dir
    from emoreg.evals.runner import evaluate_model

    base, checkpoints = args.models[0], args.models[1:]
    labels = _labels(args.labels, [_model_name(ref) for ref in args.models], base_label="base")
    suites = _suites(args.suites)
    data = parse_data_specs(args.data)
    _check_positive(args)
    models = []
    for index, (ref, label) in enumerate(zip([base, *checkpoints], labels)):
        model_suites = suites if index else [s for s in suites if s not in BASE_ONLY_SUITES]
        if index == 0 and len(model_suites) != len(suites):
            logger.info("base model: %s skipped (it compares a checkpoint with the base)", ", ".join(BASE_ONLY_SUITES))
        eval_dir = out / "evals" / label
        logger.info("evaluating %s (%s) into %s", label, ref, eval_dir)
        evaluate_model(ref, suites=model_suites, out_dir=eval_dir, vectors=args.vectors or "default",
                       base=BASE_NONE if index == 0 else base, data=data or None, limit=args.limit, seed=args.seed,
                       judge=args.judge, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                       cache_dir=args.cache_dir, dtype=args.dtype, device=args.device, progress=True)
        models.append(load_eval_dir(eval_dir, label))
    return models


def unique_labels(names: list[str]) -> list[str]:
    """Make names unique in order: a repeated name gets ``-2``, ``-3``, ... (never clashing with another name)."""
    taken: set[str] = set()
    labels = []
    for name in names:
        label, counter = name, 2
        while label in taken:
            label, counter = f"{name}-{counter}", counter + 1
        taken.add(label)
        labels.append(label)
    return labels


def _model_name(ref: str) -> str:
    """A label from a model ref: a directory's name, or a hub id with '/' as '--'; safe as a directory name."""
    path = Path(ref)
    name = path.resolve().name if path.exists() else ref.replace("/", "--")
    return safe_name(name)


def _labels(given: str | None, names: list[str], base_label: str | None) -> list[str]:
    if given is not None:
        labels = parse_names(given, "--labels") or []
        if len(labels) != len(names):
            raise ConfigError(f"--labels: expected {len(names)} labels (one per model), got {len(labels)}")
        bad = [label for label in labels if not re.fullmatch(r"[A-Za-z0-9._+-]+", label)]
        if bad:
            raise ConfigError(f"--labels: labels are directory names: use letters, digits, '.', '_', '+', '-' "
                              f"(got {bad})")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"--labels: labels must be unique, got {labels}")
        return labels
    if base_label is not None:
        names = [base_label, *names[1:]]
    return unique_labels(names)


def _suites(text: str) -> list[str]:
    if text.strip().lower() == "all":
        from emoreg.evals.suites import SUITE_NAMES

        return list(SUITE_NAMES)
    return parse_names(text, "--suites") or []


def _check_positive(args: argparse.Namespace) -> None:
    for option in ("limit", "batch_size", "max_new_tokens"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ConfigError(f"--{option.replace('_', '-')} must be >= 1, got {value}")
