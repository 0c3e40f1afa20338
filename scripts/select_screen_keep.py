"""Choose (or check) the demo's ``screen`` kept fraction on a validation split of the training requests.

Usage: python scripts/select_screen_keep.py --out runs/screen-validation [--threads 1]

Trains the demo recipe without screening and with screening that keeps 75%, 50% and 25% of a training split
(120 of the 160 rows), scores the skill on the 40 held-back training requests and the spill-over on
``heldout_requests`` (which the demo never evaluates on), and applies the rule fixed in
:mod:`emoreg.demo.validation`. About 50 minutes on one core.

Measured (seed 0): the rule chose keep 0.5, the fraction the demo's ``screen`` arm already used (README, "The
demo"); ``screen_validation.json`` in ``--out`` holds every candidate's numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emoreg.demo.validation import KEEP_FRACTIONS, run_screen_validation
from emoreg.utils.threads import configure_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the split, checkpoints and evals")
    parser.add_argument("--keeps", default=",".join(f"{k:g}" for k in KEEP_FRACTIONS),
                        help="screened kept fractions to try (comma-separated)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", default=None, help="torch threads (default: emoreg's choice)")
    args = parser.parse_args()
    configure_threads(args.threads)
    run_screen_validation(args.out, keeps=[float(k) for k in args.keeps.split(",")], seed=args.seed)


if __name__ == "__main__":
    main()
