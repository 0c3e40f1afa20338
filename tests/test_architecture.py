"""The package's structure: each package imports only the layers below it, and nothing private across packages.

Layers, top to bottom (README "Development"): ``cli`` > ``demo`` > ``train`` > ``integrations``, ``compare`` >
``evals`` > ``regularization``, ``textemotion`` > ``vectors`` > ``models`` > ``utils``; ``errors`` and
``version`` are at the bottom. Imports inside functions count as well. A package's ``__main__`` module is an
entry point (``python -m emoreg.train`` runs the CLI) and may import any layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "emoreg"
LAYERS: dict[str, int] = {
    "cli": 9, "demo": 8, "train": 7, "integrations": 6, "compare": 6, "evals": 5, "regularization": 4,
    "textemotion": 4, "vectors": 3, "models": 2, "utils": 1, "errors": 0, "version": 0, "data": 0,
}


def _modules() -> list[tuple[str, Path]]:
    return [(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts), path)
            for path in sorted(PACKAGE.rglob("*.py"))]


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, imported module, names)`` of every emoreg import in the file (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, target] if target else base)
            if target.split(".")[0] == "emoreg":
                found.append((node.lineno, target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "emoreg"]
    return found


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_subpackage_has_a_layer():
    packages = {_package_of(name) for name, _ in _modules()} - {"__init__", ""}
    assert packages <= set(LAYERS), f"give {sorted(packages - set(LAYERS))} a layer in LAYERS (and the README)"


def test_no_package_imports_a_layer_above_it():
    upward = []
    for name, path in _modules():
        own = _package_of(name)
        if own not in LAYERS or name.endswith(".__main__"):
            continue
        for line, target, _ in _imports(path):
            other = _package_of(target)
            if other in LAYERS and other != own and LAYERS[other] >= LAYERS[own]:
                upward.append(f"{name}:{line} imports {target} ({own} is layer {LAYERS[own]}, {other} is "
                              f"{LAYERS[other]})")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("scope", ["package", "module"])
def test_no_private_names_are_imported_across_boundaries(scope):
    """``package``: no module imports another package's underscore names; ``module``: not even its own
    package's (what is shared is public where it belongs)."""
    private = []
    for name, path in _modules():
        for line, target, names in _imports(path):
            if scope == "package" and _package_of(target) == _package_of(name):
                continue
            if target == name:
                continue
            private += [f"{name}:{line} imports {target}.{n}" for n in names if n.startswith("_") and not
                        n.startswith("__")]
    assert not private, "\n".join(private)
