"""The package facades: every public name resolves to the object its module defines, lazily."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

FACADES = ["emoreg", "emoreg.vectors", "emoreg.evals", "emoreg.integrations", "emoreg.regularization"]


@pytest.mark.parametrize("package", FACADES)
def test_every_exported_name_resolves(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    if hasattr(module, "_EXPORTS"):
        for name, source in module._EXPORTS.items():
            assert getattr(module, name) is getattr(importlib.import_module(source), name)
        assert set(module.__all__) <= set(dir(module))


@pytest.mark.parametrize("package", ["emoreg.vectors", "emoreg.evals", "emoreg.integrations"])
def test_unknown_names_are_attribute_errors(package):
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        importlib.import_module(package).nope  # noqa: B018


def test_importing_a_facade_is_cheap():
    """No facade imports transformers' Trainer or the eval suites until a name is used."""
    code = ("import sys, emoreg.vectors, emoreg.evals, emoreg.integrations; "
            "print(any(m.startswith(('transformers.trainer', 'emoreg.evals.suites.')) for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
