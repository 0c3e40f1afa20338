"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import re

from emoreg.errors import ConfigError

DTYPE_CHOICES = ("float32", "bfloat16", "float16", "auto")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` and the options of :func:`add_runtime_arguments`."""
    parser.add_argument("--model", default="default",
                        help="'default' (embedded SmolLM2-135M-Instruct), a Hugging Face id, a local model "
                             "directory or a .gguf file (default: %(default)s)")
    add_runtime_arguments(parser)


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--device`` and ``--threads``: where and how a command runs its model."""
    parser.add_argument("--dtype", default="float32", choices=list(DTYPE_CHOICES),
                        help="model dtype (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: %(default)s)")
    add_threads_argument(parser)


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data SUITE[.PART]=PATH`` (repeatable), parsed by :func:`parse_data_specs`."""
    parser.add_argument("--data", action="append", default=[], metavar="SUITE[.PART]=PATH",
                        help="replace a suite's data file (the first part with SUITE=PATH); repeatable")


def parse_data_specs(values: list[str]) -> dict[str, str]:
    """``["SUITE=PATH", "SUITE.PART=PATH"]`` -> ``{"SUITE": "PATH", "SUITE.PART": "PATH"}``; malformed or
    repeated keys are errors."""
    data: dict[str, str] = {}
    for value in values:
        key, sep, path = value.partition("=")
        if not sep or not key.strip() or not path.strip():
            raise ConfigError(f"--data: expected SUITE=PATH or SUITE.PART=PATH, got {value!r}")
        key = key.strip()
        if key in data:
            raise ConfigError(f"--data: {key} given twice ({data[key]!r} and {path.strip()!r})")
        data[key] = path.strip()
    return data


def safe_name(name: str) -> str:
    """``name`` as a directory name: runs of characters other than letters, digits, ``.``, ``_``, ``+`` and ``-``
    become ``_`` (``model`` when nothing is left)."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name) or "model"


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


def parse_names(text: str | None, option: str | None = None) -> list[str] | None:
    """A comma-separated list of names, or None; an empty list is an error naming ``option``."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        where = f"{option}: " if option else ""
        raise ConfigError(f"{where}expected a comma-separated list of names, got {text!r}")
    return names
