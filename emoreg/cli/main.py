"""``emoreg``: extract emotion vectors, train with them in check, evaluate and compare checkpoints, run the demo.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and
``run(args)``; errors raised on purpose (:class:`emoreg.errors.EmoRegError`)
become a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import contextmanager

from emoreg.errors import EmoRegError
from emoreg.version import __version__


def build_parser() -> argparse.ArgumentParser:
    from emoreg.cli import compare, demo, eval, extract, inspect, scan, train, write_stories

    parser = argparse.ArgumentParser(
        prog="emoreg",
        description="Emotion vectors for causal LMs: extract them, regularise them in training, evaluate and "
                    "compare checkpoints.",
    )
    parser.add_argument("--version", action="version", version=f"emoreg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (demo, extract, inspect, scan, write_stories, train, eval, compare):
        module.add_parser(subparsers)
    return parser


@contextmanager
def _threads_for(args: argparse.Namespace):
    """Commands that run a model (those with ``--threads``) use the chosen torch thread count; the previous count
    is restored afterwards, for callers that run ``main`` in-process."""
    if not hasattr(args, "threads"):
        yield
        return
    import torch

    from emoreg.utils.threads import configure_threads

    before = torch.get_num_threads()
    configure_threads(args.threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "huggingface_hub", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        with _threads_for(args):
            return int(args.run(args) or 0)
    except EmoRegError as exc:
        print(f"emoreg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"emoreg {args.command}: interrupted; nothing was half-written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
