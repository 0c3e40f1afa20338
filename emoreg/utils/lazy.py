"""A package's public names, imported from their modules only when first used (PEP 562).

A facade (``emoreg.vectors``, ``emoreg.evals``, ``emoreg.integrations``) lists where each public name lives;
importing the package stays cheap (no transformers, no suites) and cannot create import cycles, and
``from emoreg.evals import run_suites`` works as if the name were defined there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps each public name to its module."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
