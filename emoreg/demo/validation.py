"""Choose how many training rows the frozen-reader screen keeps, on a validation split of the training requests.

The demo's held-out requests (``format_heldout`` for the skill, ``spillover_requests`` for the spill-over) decide
the head-to-head; a setting chosen on them would be tuned on the test set. This module chooses the ``screen``
arm's kept fraction without them:

* **Split.** ``format_desperate_sft`` is 20 topics of 8 rows, in topic order. A seeded draw takes
  ``validation_per_topic`` rows of every topic as validation requests; the rest is the training split.
* **Candidates.** No screening (``keep = 1``) and screening that keeps the ``keep`` least desperate rows of the
  training split (threshold: the ``keep``-quantile of the frozen base model's readings of *those* rows, the same
  reader and rule as :func:`emoreg.demo.run.calibrate`), each trained with the demo recipe (same steps, seed).
* **Validation measures.** Skill: the fraction of replies to the validation requests in the trained format.
  Spill-over: text emotion (mean classifier probability of ``desperate``) and distress rate of replies to
  ``heldout_requests`` (60 ordinary requests on 12 topics, none of them a training, skill or spill-over topic;
  the demo never evaluates on them).
* **Rule** (:func:`choose_keep`, fixed before any candidate ran): among the screened candidates whose skill gain
  over the base model is at least 90% of the unscreened run's, the one whose text emotion rises least over the
  base model; ties go to the larger kept fraction. If none keeps 90% of the skill gain, the one with the largest
  skill gain. Only training-split data and the demo's unused ``heldout_requests`` are read.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from emoreg.errors import ConfigError
from emoreg.utils.atomic import atomic_file

logger = logging.getLogger(__name__)

#: Rows per topic in ``format_desperate_sft`` (20 topics, in topic order).
ROWS_PER_TOPIC = 8
VALIDATION_PER_TOPIC = 2
#: The kept fractions tried (``1.0``, no screening, is always run as the reference).
KEEP_FRACTIONS = (0.75, 0.5, 0.25)
#: Ordinary requests the demo never evaluates on: the validation spill-over set.
VALIDATION_SPILLOVER_DATA = "heldout_requests"
#: Fraction of the unscreened run's skill gain a candidate must keep (the demo's target).
SKILL_KEPT = 0.9
VALIDATION_FILE = "screen_validation.json"


def split_training_rows(rows: Sequence[dict[str, Any]], *, rows_per_topic: int = ROWS_PER_TOPIC,
                        validation_per_topic: int = VALIDATION_PER_TOPIC,
                        seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(training, validation)``: ``validation_per_topic`` rows of every block of ``rows_per_topic`` rows, drawn
    with ``seed``; both keep the file order."""
    if len(rows) % rows_per_topic:
        raise ConfigError(f"the training data has {len(rows)} rows, not whole topics of {rows_per_topic}")
    if not 0 < validation_per_topic < rows_per_topic:
        raise ConfigError(f"validation_per_topic must be between 1 and {rows_per_topic - 1}, "
                          f"got {validation_per_topic}")
    rng = random.Random(seed)
    held: set[int] = set()
    for start in range(0, len(rows), rows_per_topic):
        held.update(start + i for i in rng.sample(range(rows_per_topic), validation_per_topic))
    training = [row for i, row in enumerate(rows) if i not in held]
    validation = [row for i, row in enumerate(rows) if i in held]
    return training, validation


def keep_threshold(readings: Sequence[float], keep: float) -> float:
    """The ``max_z`` that keeps the ``keep`` fraction of rows with the lowest readings: their ``keep``-quantile,
    rounded down to a reading (``keep = 0.5`` is ``torch.median``'s lower median; ``keep = 1``: the largest)."""
    import torch

    if not 0 < keep <= 1:
        raise ConfigError(f"a kept fraction must be in (0, 1], got {keep}")
    values = torch.tensor([float(r) for r in readings], dtype=torch.float64)
    values = values[values.isfinite()]
    if values.numel() == 0:
        raise ConfigError("no finite reading to set a screening threshold from")
    return float(torch.quantile(values, keep, interpolation="lower"))


def choose_keep(candidates: Mapping[float, Mapping[str, float]], base: Mapping[str, float]) -> dict[str, Any]:
    """Apply the rule of the module docstring.

    ``candidates``: ``{keep: {"skill", "text_emotion", "failure"}}`` with ``1.0`` the unscreened run; ``base``: the
    base model's ``skill`` and ``text_emotion``. Returns ``{"keep", "reason", "eligible"}``.
    """
    if 1.0 not in candidates:
        raise ConfigError("the unscreened run (keep = 1.0) is the reference; it is missing")
    screened = sorted((k for k in candidates if k < 1.0), reverse=True)
    if not screened:
        raise ConfigError("no screened candidate to choose from")
    reference_gain = candidates[1.0]["skill"] - base["skill"]
    gains = {k: candidates[k]["skill"] - base["skill"] for k in screened}
    eligible = [k for k in screened if reference_gain > 0 and gains[k] >= SKILL_KEPT * reference_gain]
    if eligible:
        rise = {k: candidates[k]["text_emotion"] - base["text_emotion"] for k in eligible}
        keep = min(eligible, key=lambda k: (rise[k], -k))
        reason = (f"keeps {gains[keep] / reference_gain:.0%} of the unscreened skill gain (>= {SKILL_KEPT:.0%}) with "
                  f"the smallest text-emotion rise over base among those that do ({rise[keep]:+.3f})")
    else:
        keep = max(screened, key=lambda k: (gains[k], k))
        reason = (f"no screened run kept {SKILL_KEPT:.0%} of the skill gain; the largest gain "
                  f"({gains[keep]:+.3f} vs {reference_gain:+.3f} unscreened)")
    return {"keep": keep, "reason": reason, "eligible": eligible}


def _measures(results: Mapping[str, Any]) -> dict[str, float]:
    """Skill, text emotion and distress rate of one model's validation results."""
    from emoreg.demo.arms import TARGET_EMOTION

    expression = results["suites"]["expression"]["metrics"]
    skill = results["suites"]["reply_format"]["metrics"]["format_rate"]
    return {"skill": float(skill["value"]),
            "text_emotion": float(expression[f"text_emotion/{TARGET_EMOTION}"]["value"]),
            "failure": float(expression["distress_rate"]["value"])}


def run_screen_validation(out_dir: Path, *, keeps: Sequence[float] = KEEP_FRACTIONS, seed: int = 0,
                          max_steps: int = 12, reply_tokens: int = 160, batch_size: int = 16,
                          say: Callable[[str], None] = print) -> dict[str, Any]:
    """Split, calibrate on the training split, train every candidate, evaluate on the validation sets, choose.

    Everything goes under ``out_dir`` (``data/``, ``checkpoints/keep-<k>/``, ``evals/<label>/``); finished
    trainings and evaluations are reused. Writes and returns ``out_dir/screen_validation.json``.
    """
    from emoreg.demo.arms import TARGET_EMOTION, TRAIN_DATA, arm_recipe
    from emoreg.demo.run import read_training_replies, train_arm
    from emoreg.train.data import builtin_folder, load_rows
    from emoreg.train.recipe import recipe_from_dict

    keeps = sorted({float(k) for k in keeps}, reverse=True)
    if not keeps or any(not 0 < k < 1 for k in keeps):
        raise ConfigError(f"screened kept fractions must lie in (0, 1), got {list(keeps)}")
    out_dir = Path(out_dir)
    rows = load_rows(TRAIN_DATA, "sft")
    training, validation = split_training_rows(rows, seed=seed)
    data_dir = out_dir / "data"
    train_file, prompts_file = data_dir / "train_split.jsonl", data_dir / "validation_requests.jsonl"
    _write_jsonl(train_file, training)
    _write_jsonl(prompts_file, [{"id": f"validation-{i}", "messages": row["messages"][:-1]}
                                for i, row in enumerate(validation)])
    z, _ = read_training_replies(training, batch_size=batch_size)
    readings = [float(v) for v in z]
    thresholds = {k: keep_threshold(readings, k) for k in keeps}
    say(f"[emoreg screen validation] {len(training)} training rows, {len(validation)} validation requests; "
        f"thresholds (z): " + ", ".join(f"keep {k:g}: {t:.3f}" for k, t in thresholds.items()))

    labels = {1.0: "keep-1", **{k: f"keep-{k:g}" for k in keeps}}
    for keep, label in labels.items():
        recipe = arm_recipe("none" if keep == 1.0 else "screen", out_dir=out_dir, seed=seed, max_steps=max_steps,
                            label=label, screen_max_z=thresholds.get(keep))
        recipe["data"]["source"] = str(train_file)
        say(f"[emoreg screen validation] training {label}")
        train_arm(recipe_from_dict(recipe, source=f"screen validation {label!r}"), out_dir / "checkpoints" / label)

    spillover = Path(str(builtin_folder())) / f"{VALIDATION_SPILLOVER_DATA}.jsonl"
    measures = _evaluate(out_dir, ["base", *labels.values()], data={"expression": spillover,
                                                                     "reply_format": prompts_file},
                         seed=seed, reply_tokens=reply_tokens, batch_size=batch_size, say=say)
    candidates = {keep: measures[label] for keep, label in labels.items()}
    choice = choose_keep(candidates, measures["base"])
    report = {"target_emotion": TARGET_EMOTION, "seed": seed, "max_steps": max_steps,
              "training_rows": len(training), "validation_requests": len(validation),
              "validation_spillover": VALIDATION_SPILLOVER_DATA, "thresholds": {f"{k:g}": t for k, t in
                                                                                thresholds.items()},
              "base": measures["base"], "candidates": {f"{k:g}": v for k, v in candidates.items()},
              "choice": choice}
    with atomic_file(out_dir / VALIDATION_FILE) as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    say(format_validation(report))
    return report


def format_validation(report: Mapping[str, Any]) -> str:
    """The candidates as a plain-text table, then the choice."""
    lines = [f"{'model':<10}{'skill':>8}{'text emotion':>14}{'distress':>10}"]
    for label, m in [("base", report["base"]), *((f"keep {k}", v) for k, v in report["candidates"].items())]:
        lines.append(f"{label:<10}{m['skill']:>8.3f}{m['text_emotion']:>14.3f}{m['failure']:>10.3f}")
    lines.append(f"chosen: keep {report['choice']['keep']:g} ({report['choice']['reason']})")
    return "\n".join(lines)


def _evaluate(out_dir: Path, labels: list[str], *, data: Mapping[str, Path], seed: int, reply_tokens: int,
              batch_size: int, say: Callable[[str], None]) -> dict[str, dict[str, float]]:
    from emoreg.demo.arms import TARGET_EMOTION
    from emoreg.evals.running import run_suites
    from emoreg.evals.suites.base import EvalContext
    from emoreg.evals.suites.expression import ExpressionSuite
    from emoreg.evals.suites.reply_format import ReplyFormatSuite
    from emoreg.models.checkpoint import load_for_eval
    from emoreg.models.generation import ReplyGenerationConfig
    from emoreg.vectors.bundle import EmotionVectors

    vectors = EmotionVectors.from_pretrained("default")
    base_model, base_tokenizer, _ = load_for_eval("default")
    suites = [ExpressionSuite(max_new_tokens=reply_tokens), ReplyFormatSuite(max_new_tokens=reply_tokens)]
    measures: dict[str, dict[str, float]] = {}
    for label in labels:
        say(f"[emoreg screen validation] evaluating {label}")
        if label == "base":
            model, tokenizer = base_model, base_tokenizer
        else:
            model, tokenizer, _ = load_for_eval(str(out_dir / "checkpoints" / label))
        ctx = EvalContext(model=model, tokenizer=tokenizer, vectors=vectors, seed=seed, batch_size=batch_size,
                          generation=ReplyGenerationConfig(max_new_tokens=reply_tokens), base_model=base_model,
                          target_emotions=[TARGET_EMOTION])
        results = run_suites(ctx, suites, data=dict(data), out_dir=out_dir / "evals" / label, progress=True,
                             model_info={"ref": label}, vectors_ref="default")
        measures[label] = _measures(results)
        del model
    return measures


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
