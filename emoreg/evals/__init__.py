"""Evaluation: emotion-probe activation, failure-mode rates and capability, with confidence intervals.

The public names below are imported from their modules on first use (:mod:`emoreg.utils.lazy`).
"""

from emoreg.utils.lazy import lazy_exports

_EXPORTS = {
    "evaluate_model": "emoreg.evals.runner",
    "run_suites": "emoreg.evals.runner",
    "write_outputs": "emoreg.evals.runner",
    "EvalContext": "emoreg.evals.suites.base",
    "Suite": "emoreg.evals.suites.base",
    "SUITE_NAMES": "emoreg.evals.suites",
    "get_suite": "emoreg.evals.suites",
    "mean": "emoreg.evals.statistics",
    "paired_difference": "emoreg.evals.statistics",
    "rate": "emoreg.evals.statistics",
    "wilson_interval": "emoreg.evals.statistics",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
