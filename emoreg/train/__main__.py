"""``python -m emoreg.train RECIPE [key=value ...]`` (also under ``accelerate launch -m emoreg.train``)."""

from __future__ import annotations

import sys

from emoreg.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
