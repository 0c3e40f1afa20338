"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from emoreg.errors import ConfigError


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default",
                        help="'default' (embedded SmolLM2-135M-Instruct), a Hugging Face id, a local model "
                             "directory or a .gguf file (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                        help="model dtype (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: %(default)s)")
    add_threads_argument(parser)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch CPU threads for a command that runs a model (:mod:`emoreg.utils.threads`)."""
    parser.add_argument("--threads", default=None, metavar="N",
                        help="torch CPU threads (default: $EMOREG_THREADS, else the usable cores less those "
                             "busy with other processes at start; use 1 on a shared machine)")


def parse_layers(text: str | None) -> list[int] | None:
    """``"all"``/``None`` -> None; ``"10,20"`` and ``"10-20"`` ranges -> sorted indices."""
    if text is None or text.strip().lower() == "all":
        return None
    layers: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if high < low:
                    raise ValueError
                layers.update(range(low, high + 1))
            else:
                layers.add(int(part))
    except ValueError:
        raise ConfigError(f"--layers: expected 'all', a list like '10,20' or a range like '10-20', "
                          f"got {text!r}") from None
    if not layers:
        raise ConfigError(f"--layers: no layer in {text!r}")
    return sorted(layers)


def parse_names(text: str | None) -> list[str] | None:
    """A comma-separated list of names, or None."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"expected a comma-separated list of names, got {text!r}")
    return names
