"""The code runs on the oldest Python that ``requires-python`` in pyproject.toml allows."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Names that the standard library gained after Python 3.10 (the floor of ``requires-python``).
NEWER_THAN_310 = {
    "typing": {"Self", "LiteralString", "Never", "assert_never", "reveal_type", "Required", "NotRequired",
               "TypeVarTuple", "Unpack", "dataclass_transform", "override", "TypeAliasType"},
    "enum": {"StrEnum", "ReprEnum", "verify", "EnumCheck"},
    "datetime": {"UTC"},
    "hashlib": {"file_digest"},
    "itertools": {"batched"},
}
NEW_MODULES = {"tomllib", "wsgiref.types"}


def test_requires_python_is_310():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^requires-python = ">=3\.10"$', text, re.M), "update NEWER_THAN_310 with the new floor"


def test_no_module_uses_standard_library_names_newer_than_the_floor():
    found = []
    for path in sorted((ROOT / "emoreg").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in NEWER_THAN_310:
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                          if a.name in NEWER_THAN_310[node.module]]
            elif isinstance(node, ast.Import):
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                          if a.name in NEW_MODULES]
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.attr in NEWER_THAN_310.get(node.value.id, ())):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not found, f"Python 3.11+ names in a package that says requires-python >= 3.10: {found}"
