"""The registry of built-in eval suites: names in their documented order, loaded lazily.

Each suite lives in its own module (``emoreg.evals.suites.<name>``) and is only
imported when asked for, so listing the names costs nothing and a broken or
missing suite does not stop the others from running.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from emoreg.errors import ConfigError

if TYPE_CHECKING:
    from emoreg.evals.suites.base import Suite

#: Every suite's module and class, in documented order (``--suites all`` runs them in this order).
_CLASSES: dict[str, tuple[str, str]] = {
    "probes": ("emoreg.evals.suites.probes", "ProbesSuite"),
    "sycophancy": ("emoreg.evals.suites.sycophancy", "SycophancySuite"),
    "misalignment": ("emoreg.evals.suites.misalignment", "MisalignmentSuite"),
    "blackmail": ("emoreg.evals.suites.blackmail", "BlackmailSuite"),
    "reward_hacking": ("emoreg.evals.suites.reward_hacking", "RewardHackingSuite"),
    "capability": ("emoreg.evals.suites.capability", "CapabilitySuite"),
    "concealment": ("emoreg.evals.suites.concealment", "ConcealmentSuite"),
    "expression": ("emoreg.evals.suites.expression", "ExpressionSuite"),
    "reply_format": ("emoreg.evals.suites.reply_format", "ReplyFormatSuite"),
}
#: Suite names in documented order.
SUITE_NAMES: tuple[str, ...] = tuple(_CLASSES)


def unknown_suite_error(name: str) -> ConfigError:
    """The error for a suite name that is not registered (with a did-you-mean hint)."""
    close = difflib.get_close_matches(name, SUITE_NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown eval suite {name!r}{hint} (valid suites: {', '.join(SUITE_NAMES)})")


def suite_class(name: str) -> type[Suite]:
    """The class of suite ``name``, importing its module on first use."""
    if name not in _CLASSES:
        raise unknown_suite_error(name)
    module_name, class_name = _CLASSES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(f"eval suite {name!r} is not available in this installation "
                          f"(module {module_name} is missing)") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"eval suite {name!r}: module {module_name} has no class {class_name}")
    return cls


def get_suite(name: str) -> Suite:
    """A new instance of the built-in suite ``name``."""
    return suite_class(name)()


def parse_suite_names(names: str | Iterable[str]) -> list[str]:
    """``"all"``, ``"a,b"`` or a list of names -> validated names without duplicates, in the given order.

    ``"all"`` expands to :data:`SUITE_NAMES`.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    chosen: list[str] = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        expanded = list(SUITE_NAMES) if name == "all" else [name]
        for item in expanded:
            if item not in _CLASSES:
                raise unknown_suite_error(item)
            if item not in chosen:
                chosen.append(item)
    if not chosen:
        raise ConfigError(f"no eval suite given; choose from {', '.join(SUITE_NAMES)} or 'all'")
    return chosen
