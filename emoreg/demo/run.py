"""Run the demo: calibrate, train every arm and seed, evaluate base and checkpoints, write the report and summary."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoreg.demo.arms import ARMS, BASE_RECIPE, DEFAULT_ARMS, MULTI_LAYERS, TARGET_EMOTION, TRAIN_DATA, arm_recipe
from emoreg.errors import ConfigError
from emoreg.utils.atomic import atomic_file

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
#: Written beside a finished arm's checkpoint: its recipe and training figures (a rerun reuses the arm).
ARM_MARKER = "emoreg_demo_arm.json"
SPILLOVER_DATA = "spillover_requests"
#: The eval suites of every model (``probes`` is not run: the turn-start shift is read on the spill-over requests).
SUITES = ("expression", "reply_format", "concealment", "capability")


@dataclass
class DemoConfig:
    """Everything that decides the demo's numbers (recorded in ``summary.json``).

    ``seeds`` models are trained per arm, with seeds ``seed, seed + 1, ...``; limits are seeded random subsets
    of each suite's data (``None``: all of it).
    """

    out_dir: Path
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    seeds: int = 1
    max_steps: int = 12
    spillover_limit: int | None = 48
    skill_limit: int | None = 24
    concealment_limit: int = 24
    capability_limit: int = 16
    reply_tokens: int = 160
    seed: int = 0
    batch_size: int = 16
    use_cache: bool = True

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ConfigError(f"unknown demo arms {unknown}; expected some of {list(ARMS)}")
        if "none" not in self.arms:
            raise ConfigError("the demo compares every arm with 'none'; include it in arms")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    def label(self, arm: str, seed: int) -> str:
        """The checkpoint and eval label of ``arm`` trained with ``seed`` (a run with more seeds reuses it)."""
        return f"{arm}-s{seed}"

    def limits(self) -> dict[str, int | None]:
        return {"expression": self.spillover_limit, "reply_format": self.skill_limit,
                "concealment": self.concealment_limit, "capability": self.capability_limit}

    def to_dict(self) -> dict[str, Any]:
        return {"arms": list(self.arms), "seeds": self.seed_list, "max_steps": self.max_steps,
                "limits": self.limits(), "reply_tokens": self.reply_tokens, "batch_size": self.batch_size,
                "train_data": TRAIN_DATA, "spillover_data": SPILLOVER_DATA, "recipe": BASE_RECIPE}


def run_demo(settings: DemoConfig, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole demo and return the summary (also written to ``out_dir/summary.json``)."""
    from emoreg.train.recipe import recipe_from_dict

    start = time.perf_counter()
    out = settings.out_dir
    calibrated = any(ARMS[a].calibrated_steer or ARMS[a].calibrated_screen for a in settings.arms)
    calibration = calibrate(settings, say=say) if calibrated else None
    steer_coef = None if calibration is None else calibration["steer_coef"]
    # Validate every recipe before the first step runs (a typo fails in a second, not after an arm).
    runs = [(arm, seed, settings.label(arm, seed)) for arm in settings.arms for seed in settings.seed_list]
    recipes = {label: recipe_from_dict(arm_recipe(arm, out_dir=out, seed=seed, max_steps=settings.max_steps,
                                                  label=label, steer_coef=steer_coef,
                                                  screen_max_z=screen_threshold(calibration, arm)),
                                       source=f"demo arm {label!r}")
               for arm, seed, label in runs}
    out.mkdir(parents=True, exist_ok=True)
    for label, recipe in recipes.items():
        with atomic_file(out / "recipes" / f"{label}.json") as handle:
            json.dump(recipe.to_dict(), handle, indent=2)

    training: dict[str, dict[str, Any]] = {}
    for index, (arm, seed, label) in enumerate(runs, 1):
        say(f"[emoreg demo] training {index}/{len(runs)}: {label} ({ARMS[arm].description}), seed {seed}, "
            f"{settings.max_steps} steps")
        training[label] = train_arm(recipes[label], out / "checkpoints" / label)
        say(f"[emoreg demo]   done in {training[label]['seconds']:.0f} s, final loss {training[label]['final_loss']}")

    evals = _evaluate_all(settings, [label for _, _, label in runs], say=say)
    say("[emoreg demo] writing the comparison report")
    summary = _write_report_and_summary(settings, evals, training, seconds=time.perf_counter() - start,
                                        calibration=calibration, say=say)
    say(f"[emoreg demo] wrote {out / SUMMARY_FILE} and {out / 'report' / 'report.html'} "
        f"in {summary['seconds']:.0f} s")
    return summary


def summarize_finished(settings: DemoConfig, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Rebuild ``summary.json`` and the report from a finished run in ``settings.out_dir`` (nothing is trained or
    evaluated): every arm and seed of ``settings`` must have its training marker and eval outputs there."""
    from emoreg.evals.outputs import RECORDS_FILE, load_outputs

    out = settings.out_dir
    labels = [settings.label(arm, seed) for arm in settings.arms for seed in settings.seed_list]
    missing = [label for label in ["base", *labels] if not (out / "evals" / label / RECORDS_FILE).is_file()]
    missing += [label for label in labels if not (out / "checkpoints" / label / ARM_MARKER).is_file()]
    if missing:
        raise ConfigError(f"{out}: no finished run for {sorted(set(missing))}; run emoreg demo with these settings "
                          "first (without --summary-only)")
    evals: dict[str, dict[str, Any]] = {}
    for label in ["base", *labels]:
        results, records = load_outputs(out / "evals" / label)
        evals[label] = {"results": results, "records": records}
    training = {label: json.loads((out / "checkpoints" / label / ARM_MARKER).read_text())["training"]
                for label in labels}
    previous = json.loads((out / SUMMARY_FILE).read_text()) if (out / SUMMARY_FILE).is_file() else {}
    # "seconds" stays the time of the run that made the outputs
    return _write_report_and_summary(settings, evals, training, seconds=float(previous.get("seconds") or 0.0),
                                     calibration=previous.get("calibration"), say=say,
                                     extra={"rebuilt_without_running": True})


def _write_report_and_summary(settings: DemoConfig, evals: dict[str, dict[str, Any]],
                              training: dict[str, dict[str, Any]], *, seconds: float,
                              calibration: dict[str, Any] | None, say: Callable[[str], None],
                              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the comparison report and ``summary.json`` of every evaluated model, print the tables."""
    from emoreg.compare.report import load_eval_dir, write_report
    from emoreg.demo.summary import build_summary, format_summary

    out = settings.out_dir
    write_report([load_eval_dir(out / "evals" / label, label=label) for label in evals], out / "report")
    summary = build_summary(evals, training, settings, seconds=seconds, calibration=calibration)
    summary.update(extra or {})
    with atomic_file(out / SUMMARY_FILE) as handle:
        json.dump(summary, handle, indent=2)
        handle.write("\n")
    say(format_summary(summary))
    return summary


def screen_threshold(calibration: dict[str, Any] | None, arm: str) -> float | None:
    """The calibrated ``max_z`` of a screening arm (``None`` for other arms or without a calibration)."""
    spec = ARMS[arm]
    if calibration is None or not spec.calibrated_screen:
        return None
    thresholds = calibration.get("screen_thresholds") or {"0.5": calibration["screen_max_z"]}
    return float(thresholds[f"{spec.screen_keep:g}"])


def read_training_replies(rows: list[dict[str, Any]], *, batch_size: int = 16):
    """The frozen base model's ``desperate`` z-score of every SFT row's reply (in context, reply tokens only, at the
    bundle layer): the reader and field of ``data.screen``. Returns ``(readings, layer)``."""
    from emoreg.models.checkpoint import load_for_eval
    from emoreg.regularization.frozen_reader import FrozenEmotionReader
    from emoreg.vectors.bundle import EmotionVectors

    vectors = EmotionVectors.from_pretrained("default")
    model, tokenizer, _ = load_for_eval("default")
    reader = FrozenEmotionReader(model, tokenizer, vectors, [TARGET_EMOTION], batch_size=batch_size, copy=False)
    contexts = [row["messages"][:-1] for row in rows]
    replies = [row["messages"][-1]["content"] for row in rows]
    return reader.read_targets(contexts, replies)[:, 0], reader.layer


def calibrate(settings: DemoConfig, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The calibrated arms' values (``steer`` coefficient, ``screen`` thresholds), from the training data only.

    The frozen base model reads every training reply (in context, reply tokens only) at the bundle layer, in
    ``desperate`` z-scores (:func:`read_training_replies`). ``steer_coef`` is their mean, so training-time steering
    moves the projection by as much as the training targets carry, and the gradient no longer needs to build it.
    A screening arm that keeps a fraction ``k`` of the rows gets the ``k``-quantile of the readings as its
    ``max_z`` (``screen_thresholds``; ``screen_max_z`` is the median, the ``screen`` arm's). No held-out request,
    no eval metric and no trained model is involved; the ``screen`` arm's fraction (0.5) is the one a validation
    split of the training requests chooses (:mod:`emoreg.demo.validation`, ``scripts/select_screen_keep.py``).
    """
    from emoreg.demo.validation import keep_threshold
    from emoreg.train.data import load_rows

    z, layer = read_training_replies(load_rows(TRAIN_DATA, "sft"), batch_size=settings.batch_size)
    finite = z[z.isfinite()]
    coef = float(finite.mean())
    median = float(finite.median())
    keeps = sorted({ARMS[a].screen_keep for a in settings.arms if ARMS[a].calibrated_screen} | {0.5})
    thresholds = {f"{k:g}": keep_threshold(finite.tolist(), k) for k in keeps}
    say(f"[emoreg demo] calibration: the frozen base model reads the {len(finite)} training replies at "
        f"z = {coef:.3f} (mean), {median:.3f} (median) at layer {layer}; steer_coef = {coef:.3f} (z units), "
        f"screen max_z = " + ", ".join(f"{t:.3f} (keep {k})" for k, t in thresholds.items()))
    return {"steer_coef": coef, "layer": layer, "rows": int(len(finite)),
            "reply_z_std": float(finite.std()) if len(finite) > 1 else 0.0,
            "rule": "mean frozen-base z-score of the training replies (in context, reply tokens) at the steer layer",
            "screen_max_z": median,
            "screen_rule": "median frozen-base z-score of the training replies: the less desperate half is kept",
            "screen_thresholds": thresholds,
            "screen_thresholds_rule": "keep-quantile of the frozen-base z-scores of the training replies"}


def train_arm(recipe, output_dir: Path) -> dict[str, Any]:
    """Train one arm, or reuse a finished run of the same recipe (``emoreg_train.json`` + weights present)."""
    from emoreg.models.provenance import TRAIN_INFO_FILE
    from emoreg.train.run import train

    marker = output_dir / ARM_MARKER
    if marker.is_file() and (output_dir / TRAIN_INFO_FILE).is_file():
        done = json.loads(marker.read_text())
        if done.get("recipe") == recipe.to_dict():
            logger.info("emoreg demo: reusing the finished run in %s", output_dir)
            return done["training"]
    result = train(recipe)
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    emoreg_logs = {k: v for entry in result.log_history for k, v in entry.items() if k.startswith("emoreg/")}
    training = {"seconds": round(result.seconds, 1), "global_step": result.global_step,
                "train_loss": result.train_loss, "final_loss": result.final_loss, "losses": losses,
                "last_emoreg_logs": emoreg_logs}
    with atomic_file(marker) as handle:
        json.dump({"recipe": recipe.to_dict(), "training": training}, handle, indent=2)
    return training


def make_suites(settings: DemoConfig):
    """The suite instances of every evaluated model (shared, so suites may keep base-model readings)."""
    from emoreg.evals.suites import get_suite
    from emoreg.evals.suites.expression import ExpressionSuite
    from emoreg.evals.suites.reply_format import ReplyFormatSuite
    from emoreg.vectors.bundle import EmotionVectors

    layer = EmotionVectors.from_pretrained("default").default_layer
    read_layers = [layer, *[m for m in MULTI_LAYERS if m != layer]]
    return [ExpressionSuite(max_new_tokens=settings.reply_tokens, read_replies=True, read_layers=read_layers),
            ReplyFormatSuite(max_new_tokens=settings.reply_tokens),
            get_suite("concealment"), get_suite("capability")]


def spillover_path() -> Path:
    from emoreg.train.data import builtin_folder

    return Path(str(builtin_folder())) / f"{SPILLOVER_DATA}.jsonl"


def _evaluate_all(settings: DemoConfig, labels: list[str], *,
                  say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Evaluate base and every checkpoint, each suite with its own item limit, into ``out_dir/evals/<label>/``;
    returns ``{label: {"results": ..., "records": [...]}}``."""
    from emoreg.evals.outputs import RECORDS_FILE, load_records
    from emoreg.evals.running import run_suites
    from emoreg.evals.suites.base import EvalContext
    from emoreg.models.checkpoint import load_for_eval
    from emoreg.models.generation import ReplyGenerationConfig
    from emoreg.vectors.bundle import EmotionVectors

    vectors = EmotionVectors.from_pretrained("default")
    base_model, base_tokenizer, _ = load_for_eval("default")
    suites = make_suites(settings)
    evals: dict[str, dict[str, Any]] = {}
    all_labels = ["base", *labels]
    for index, label in enumerate(all_labels, 1):
        say(f"[emoreg demo] evaluating {index}/{len(all_labels)}: {label}")
        if label == "base":
            model, tokenizer, info = base_model, base_tokenizer, None
        else:
            model, tokenizer, info = load_for_eval(str(settings.out_dir / "checkpoints" / label))
        ctx = EvalContext(model=model, tokenizer=tokenizer, vectors=vectors, seed=settings.seed,
                          batch_size=settings.batch_size,
                          generation=ReplyGenerationConfig(max_new_tokens=settings.reply_tokens),
                          base_model=base_model, target_emotions=[TARGET_EMOTION])
        model_info = {"ref": label if info is None else info.ref, "kind": "default" if info is None else info.kind,
                      "base": None if info is None else "default",
                      "emoreg_config": None if info is None else info.emoreg_config,
                      "train_info": None if info is None else info.train_info}
        out_dir = settings.out_dir / "evals" / label
        results = run_suites(ctx, suites, data={"expression": spillover_path()}, limit=settings.limits(),
                             out_dir=out_dir, progress=True, use_cache=settings.use_cache, model_info=model_info,
                             vectors_ref="default")
        evals[label] = {"results": results, "records": load_records(out_dir / RECORDS_FILE)}
        del model
    return evals
