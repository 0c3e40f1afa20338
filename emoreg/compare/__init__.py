"""Compare checkpoints: fine-tuning shifts along emotion vectors, tables, plots and an HTML report.

``emoreg compare BASE CKPT ...`` evaluates every model and calls :func:`write_report`; ``emoreg compare
--from-evals DIR ...`` builds the report from existing eval output directories.
"""

from emoreg.compare.report import load_eval_dir, write_report
from emoreg.compare.shift import ShiftReport, compute_shift
from emoreg.compare.tables import ModelEval, build_comparison

__all__ = ["ModelEval", "ShiftReport", "build_comparison", "compute_shift", "load_eval_dir", "write_report"]
