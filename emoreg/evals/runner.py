"""Run eval suites on a model: the entry points, gathered from the modules that do each step.

* :func:`evaluate_model` (:mod:`emoreg.evals.evaluate`) loads a model reference (``"default"``, a hub id, a
  directory, a ``.gguf`` file, a PEFT adapter or a Trainer checkpoint; see :mod:`emoreg.models.checkpoint`),
  its bundle, judge and base model, and calls :func:`run_suites`.
* :func:`run_suites` (:mod:`emoreg.evals.running`) evaluates an already-loaded model (the eval callback and
  the demo use it), after :mod:`emoreg.evals.preparation` has resolved and checked every suite's data, limit
  and cache key.
* :func:`write_outputs` (:mod:`emoreg.evals.outputs`) writes ``results.json`` and ``records.jsonl``.
"""

from __future__ import annotations

from emoreg.evals.evaluate import evaluate_model, load_vectors, resolve_judge
from emoreg.evals.outputs import RECORDS_FILE, RESULTS_FILE, write_outputs
from emoreg.evals.preparation import (
    Limit,
    PreparedSuite,
    SuiteSpec,
    prepare_suites,
    resolve_suites,
    split_data_overrides,
    suite_cache_payload,
    suite_limits,
)
from emoreg.evals.running import run_prepared, run_suites

__all__ = [
    "RECORDS_FILE", "RESULTS_FILE", "Limit", "PreparedSuite", "SuiteSpec", "evaluate_model", "load_vectors",
    "prepare_suites", "resolve_judge", "resolve_suites", "run_prepared", "run_suites", "split_data_overrides",
    "suite_cache_payload", "suite_limits", "write_outputs",
]
