"""Run eval suites on the live model during training and log their metrics: :class:`EmoRegEvalCallback`.

At every ``every_n_steps`` optimizer steps (default: the trainer's ``eval_steps``) and, optionally, at
the end of training, the callback runs :func:`emoreg.evals.running.run_suites` on the model being
trained: in eval mode and under ``torch.no_grad()`` (the previous mode of every module is restored,
no gradient is touched, and an attached emoreg :class:`~emoreg.regularization.Regularizer` records
nothing, since it acts only in training forward passes). The eval cache is not used (the weights
change every step). Metrics are flattened to ``<prefix><suite>/<metric>`` (the value) and
``<prefix><suite>/<metric>/n``.

How the metrics reach the logs follows :mod:`emoreg.integrations.callback`: the callback asks the
Trainer to log at the eval step (``control.should_log``) and merges its metrics into that log. With
:func:`attach_eval` (recommended) they are merged in a wrapper of ``trainer.log``, so every
``report_to`` backend receives them; with ``callbacks=[EmoRegEvalCallback(...)]`` they are merged in
``on_log``, which reporters registered earlier have already passed (the console, ``log_history`` and
later callbacks get them). Every rank runs the suites (DeepSpeed ZeRO-3 generation needs all ranks);
only rank 0 writes ``<output_dir>/emoreg_eval/step-<N>/results.json`` and ``records.jsonl``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from emoreg.errors import ConfigError
from emoreg.evals.suites.base import Suite

logger = logging.getLogger(__name__)


class EmoRegEvalCallback(TrainerCallback):
    """Evaluate chosen suites every N optimizer steps during ``trainer.train()``.

    Args:
        suites: suite names (``"probes,capability"``, a list, ``"all"``) or :class:`Suite` instances.
        vectors: a bundle, its path or ``"default"``; ``None`` for no bundle (suites that need one then fail).
        every_n_steps: evaluate when ``global_step`` is a multiple of it; ``None`` uses the trainer's
            ``eval_steps`` (a fraction below 1 is a share of ``max_steps``, as in transformers).
        limit: at most this many items per data part (a seeded subset, the same at every evaluation).
        judge: judge spec (``"rule"``, ``"hf:..."``, ``"openai:..."``) or a Judge, built when a suite needs it.
        data: data overrides ``{"SUITE": path, "SUITE.PART": path}``.
        seed: item subsets and sampling.
        max_new_tokens: reply length of generating suites.
        base_model: the base model for KL/concealment: a loaded model, a reference string (loaded on first
            use), or ``None``.
        prefix: prefix of the logged metric names.
        eval_on_train_end: also evaluate after the last step when it was not an eval step.
        output_subdir: where (under ``args.output_dir``) results are written; ``None`` writes nothing.
        batch_size: batch size of the suites' forward passes and generation.
        trainer: set by :func:`attach_eval`.
    """

    def __init__(
        self,
        suites: str | Sequence[str | Suite],
        *,
        vectors: Any = "default",
        every_n_steps: int | None = None,
        limit: int | None = 20,
        judge: Any = "rule",
        data: Mapping[str, str] | None = None,
        seed: int = 0,
        max_new_tokens: int = 64,
        base_model: nn.Module | str | None = None,
        prefix: str = "emoreg_eval/",
        eval_on_train_end: bool = True,
        output_subdir: str | None = "emoreg_eval",
        batch_size: int = 8,
        trainer: Any = None,
    ) -> None:
        from emoreg.evals.preparation import resolve_suites, split_data_overrides

        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps <= 0):
            raise ConfigError(f"every_n_steps must be a positive integer or None, got {every_n_steps!r}")
        if limit is not None and limit <= 0:
            raise ConfigError(f"limit must be positive or None, got {limit}")
        if max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be positive, got {max_new_tokens}")
        self.suites = resolve_suites(suites)
        split_data_overrides(data, self.suites)
        self.vectors = vectors
        self.every_n_steps = every_n_steps
        self.limit = limit
        self.judge = judge
        self.data = dict(data or {})
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.base_model = base_model
        self.prefix = prefix
        self.eval_on_train_end = eval_on_train_end
        self.output_subdir = output_subdir
        self.batch_size = batch_size
        self.trainer = trainer
        self.history: list[dict[str, Any]] = []  # {"step", "results"} per evaluation
        self._interval: int | None = None
        self._bundle = None
        self._judge_obj = None
        self._base_loaded: nn.Module | None = None
        self._pending: dict[str, float] = {}
        self._last_step: int | None = None

    # ------------------------------------------------------------------ trainer events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._interval = self.every_n_steps or _eval_interval(args, state)
        self._pending = {}
        if self.vectors is not None and self._bundle is None and any(s.requires_vectors for s in self.suites):
            from emoreg.evals.evaluate import load_vectors

            self._bundle = load_vectors(self.vectors)
            if model is not None:
                self._bundle.check_model(model)
        if self._judge_obj is None and any(s.uses_judge for s in self.suites):
            from emoreg.evals.evaluate import resolve_judge

            self._judge_obj = resolve_judge(self.judge)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self._interval and state.global_step > 0 and state.global_step % self._interval == 0:
            self._evaluate(args, state, model, processing_class)
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.trainer is not None or not self._pending or logs is None:
            return
        logs.update(self._pending)
        if state.log_history:
            state.log_history[-1].update(self._pending)
        self._pending = {}

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not self.eval_on_train_end or self._last_step == state.global_step or state.global_step == 0:
            return
        self._evaluate(args, state, model, processing_class)
        metrics, self._pending = self._pending, {}
        if self.trainer is not None:
            self.trainer.log(metrics)
        else:  # no log call follows train end: record the metrics where the Trainer would
            state.log_history.append({**metrics, "step": state.global_step})
            logger.info("emoreg eval at the end of training (step %d): %s", state.global_step, metrics)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: nn.Module, tokenizer: Any, *, step: int | None = None,
                 out_dir: str | Path | None = None) -> dict[str, Any]:
        """Run the suites on ``model`` now (eval mode, no grad, modes restored) and return the results dict."""
        from emoreg.evals.running import run_suites
        from emoreg.evals.suites.base import EvalContext
        from emoreg.models.fingerprint import model_content_hash
        from emoreg.models.generation import ReplyGenerationConfig

        base, base_key = self._base(model)
        ctx = EvalContext(model=model, tokenizer=tokenizer, vectors=self._bundle, judge=self._judge_obj,
                          seed=self.seed, batch_size=self.batch_size,
                          generation=ReplyGenerationConfig(max_new_tokens=self.max_new_tokens), base_model=base)
        with torch.no_grad():
            key = model_content_hash(model)
            return run_suites(ctx, self.suites, data=self.data, limit=self.limit, out_dir=out_dir, use_cache=False,
                              model_key=key, base_key=key if base is model else base_key, progress=False,
                              model_info={"ref": f"training step {step}" if step is not None else None},
                              vectors_ref=self.vectors if isinstance(self.vectors, str) else None)

    def _evaluate(self, args, state, model, processing_class) -> None:
        if model is None:
            raise ConfigError("EmoRegEvalCallback needs the model (the transformers Trainer passes it)")
        tokenizer = getattr(processing_class, "tokenizer", None) or processing_class
        if tokenizer is None and self.trainer is not None:
            tokenizer = getattr(self.trainer, "processing_class", None)
        if tokenizer is None:
            raise ConfigError("EmoRegEvalCallback needs the tokenizer: pass processing_class=tokenizer to the trainer")
        out_dir = None
        if self.output_subdir and args.output_dir:
            out_dir = Path(args.output_dir) / self.output_subdir / f"step-{state.global_step}"
        results = self.evaluate(model, tokenizer, step=state.global_step, out_dir=out_dir)
        self.history.append({"step": state.global_step, "results": results})
        self._pending.update(flatten_metrics(results, self.prefix))
        self._last_step = state.global_step

    def _base(self, model: nn.Module) -> tuple[nn.Module | None, str | None]:
        if self.base_model is None:
            return None, None
        if isinstance(self.base_model, nn.Module):
            from emoreg.models.fingerprint import model_content_hash

            return self.base_model, model_content_hash(self.base_model)
        if self._base_loaded is None:
            from emoreg.models.checkpoint import load_for_eval

            device = next(model.parameters()).device
            self._base_loaded = load_for_eval(str(self.base_model), "float32", device)[0]
        return self._base_loaded, str(self.base_model)


def flatten_metrics(results: Mapping[str, Any], prefix: str = "emoreg_eval/") -> dict[str, float]:
    """``{prefix + suite/metric: value, prefix + suite/metric/n: n}`` from a results dict."""
    out: dict[str, float] = {}
    for suite, entry in results.get("suites", {}).items():
        for metric, values in entry.get("metrics", {}).items():
            value = values.get("value")
            out[f"{prefix}{suite}/{metric}"] = float(value) if value is not None else math.nan
            if values.get("n") is not None:
                out[f"{prefix}{suite}/{metric}/n"] = float(values["n"])
    return out


def _eval_interval(args, state) -> int:
    steps = getattr(args, "eval_steps", None)
    if steps is None:
        raise ConfigError("EmoRegEvalCallback: pass every_n_steps=N or set the trainer's eval_steps")
    if 0 < steps < 1:
        if not state.max_steps or state.max_steps <= 0:
            raise ConfigError(f"eval_steps={steps} is a fraction of max_steps, which is unknown; pass every_n_steps")
        return max(1, math.ceil(state.max_steps * steps))
    return int(steps)


def attach_eval(trainer: Any, suites: str | Sequence[str | Suite], **kwargs: Any) -> EmoRegEvalCallback:
    """Add an :class:`EmoRegEvalCallback` to a built trainer so every ``report_to`` backend gets its metrics.

    It wraps ``trainer.log``: pending eval metrics are merged into the next log (the one the callback
    requests at the eval step) before the reporters see it. Returns the callback.
    """
    callback = EmoRegEvalCallback(suites, trainer=trainer, **kwargs)
    trainer.callback_handler.callbacks.insert(0, callback)
    original_log = trainer.log

    def log(logs: dict[str, float], *args, **log_kwargs):
        if callback._pending:
            logs.update(callback._pending)
            callback._pending = {}
        return original_log(logs, *args, **log_kwargs)

    trainer.log = log
    return callback
