"""An eval's inputs: suites, data files, items and cache keys, all checked before any suite runs.

For each suite the data parts are resolved (built-in files, or ``data`` overrides ``{"SUITE": path}`` for
the first part and ``{"SUITE.PART": path}`` for others), items are read and limited per part with
``limit_items(items, limit, seed)`` (``limit`` is one number for every suite or ``{suite: n}``), and a cache
key is computed from everything that changes the records (:func:`suite_cache_payload`). Every input problem
(unknown suite or part, missing file, a bad limit, a suite needing a bundle or judge that is absent) is
raised here, before any suite runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emoreg.errors import ConfigError
from emoreg.evals.cache import cache_key, file_sha256
from emoreg.evals.suites import SUITE_NAMES, parse_suite_names, suite_class, unknown_suite_error
from emoreg.evals.suites.base import EvalContext, Item, Suite, limit_items
from emoreg.version import __version__

SuiteSpec = str | Suite
#: Items per data part: one number (or ``None``, no limit) for every suite, or ``{suite name: n}``.
Limit = int | Mapping[str, int | None] | None


@dataclass
class PreparedSuite:
    """A suite with its resolved data, limited items, limit and cache key, ready to run."""

    suite: Suite
    parts: dict[str, Path]
    items: list[Item]
    data_info: dict[str, dict[str, Any]]
    payload: dict[str, Any]
    key: str
    limit: int | None


def resolve_suites(suites: str | Sequence[SuiteSpec]) -> list[Suite]:
    """Suite instances from names (``"all"``, ``"a,b"``, a list) or instances (custom suites)."""
    if isinstance(suites, str):
        suites = [suites]
    out: list[Suite] = []
    names: list[str] = []
    for spec in suites:
        if isinstance(spec, Suite):
            out.append(spec)
            names.append(spec.name)
            continue
        if not isinstance(spec, str):
            raise ConfigError(f"a suite must be a name or a Suite instance, got {type(spec).__name__}")
        for name in parse_suite_names(spec):
            if name not in names:
                out.append(suite_class(name)())
                names.append(name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"eval suite(s) given twice: {', '.join(duplicates)}")
    if not out:
        raise ConfigError("no eval suite given")
    return out


def split_data_overrides(data: Mapping[str, str | Path] | None, suites: Sequence[Suite]) -> dict[str, dict[str, Path]]:
    """``{"SUITE": path, "SUITE.PART": path}`` -> ``{suite: {part: path}}``, every name and file checked.

    ``SUITE`` alone names the suite's first data part.
    """
    by_name = {s.name: s for s in suites}
    out: dict[str, dict[str, Path]] = {}
    for spec, path in (data or {}).items():
        suite_name, _, part = str(spec).partition(".")
        if suite_name not in by_name:
            if suite_name not in SUITE_NAMES:
                raise unknown_suite_error(suite_name)
            raise ConfigError(f"data override {spec}={path}: suite {suite_name!r} is not being run "
                              f"(running: {', '.join(by_name)})")
        suite = by_name[suite_name]
        parts = list(suite.data_parts)
        if not parts:
            raise ConfigError(f"data override {spec}={path}: suite {suite_name!r} reads no data files")
        part = part or parts[0]
        if part not in parts:
            raise ConfigError(f"data override {spec}={path}: suite {suite_name!r} has no data part {part!r}; "
                              f"its parts are {', '.join(parts)} (the first is the default of {suite_name}=PATH)")
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"data override {spec}={path}: no such file")
        if part in out.setdefault(suite_name, {}):
            raise ConfigError(f"data override for {suite_name}.{part} given twice")
        out[suite_name][part] = file
    return out


def resolve_data_parts(suite: Suite, overrides: Mapping[str, Path] | None = None) -> dict[str, Path]:
    """Each data part's file: the override when given, else the built-in file."""
    overrides = overrides or {}
    parts = {}
    for part in suite.data_parts:
        path = overrides.get(part) or suite.builtin_path(part)
        if not Path(path).is_file():
            raise ConfigError(f"suite {suite.name!r}: built-in data file {path} for part {part!r} is missing; "
                              "reinstall emoreg or pass --data")
        parts[part] = Path(path)
    return parts


def load_items(suite: Suite, parts: Mapping[str, Path], limit: int | None, seed: int
               ) -> tuple[list[Item], dict[str, dict[str, Any]]]:
    """Read every part, limit each with ``limit_items(items, limit, seed)`` and check ids are unique strings.

    Returns the items (parts in order) and ``{part: {"path", "sha256", "n_items", "n_total"}}``.
    """
    items: list[Item] = []
    info: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    for part, path in parts.items():
        loaded = suite.load(part, path)
        chosen = limit_items(loaded, limit, seed)
        for item in chosen:
            item_id = item.get("id")
            if not isinstance(item_id, str):
                raise ConfigError(f"suite {suite.name!r}, {path}: an item has id {item_id!r}; ids must be strings")
            if item_id in seen:
                raise ConfigError(f"suite {suite.name!r}: item id {item_id!r} appears twice "
                                  f"(parts {seen[item_id]!r} and {part!r}, {path}); ids must be unique")
            seen[item_id] = part
        items.extend(chosen)
        info[part] = {"path": str(path), "sha256": file_sha256(path), "n_items": len(chosen), "n_total": len(loaded)}
    return items, info


def check_requirements(suite: Suite, ctx: EvalContext) -> None:
    """A suite that needs a bundle or a judge must get one."""
    if suite.requires_vectors and ctx.vectors is None:
        raise ConfigError(f"suite {suite.name!r} needs an emotion-vector bundle (--vectors default or a path)")
    if suite.uses_judge and ctx.judge is None:
        raise ConfigError(f"suite {suite.name!r} needs a judge (--judge rule, hf:MODEL or openai:MODEL)")


def suite_cache_payload(suite: Suite, ctx: EvalContext, data_info: Mapping[str, Mapping[str, Any]], *,
                        model_key: str, base_key: str | None, limit: int | None) -> dict[str, Any]:
    """Everything that changes a suite's records; its SHA-256 is the cache key.

    The model's and base model's identities, the suite (name and class), each data part's SHA-256,
    ``suite.settings(ctx)``, the generation settings, the judge's settings (judged suites), the
    limit and seed, the bundle's fingerprint, layer and emotions (suites that read vectors) and the
    emoreg version.
    """
    vectors = None
    if suite.requires_vectors and ctx.vectors is not None:
        vectors = {"fingerprint": ctx.vectors.content_hash(), "layer": ctx.read_layer(),
                   "emotions": ctx.report_emotions(), "target_emotions": ctx.target_emotions}
    return {
        "emoreg_version": __version__,
        "model": model_key,
        "base": base_key,
        "suite": suite.name,
        "suite_class": f"{type(suite).__module__}.{type(suite).__qualname__}",
        "data": {part: info["sha256"] for part, info in data_info.items()},
        "settings": suite.settings(ctx),
        "generation": ctx.generation.to_dict(),
        "judge": ctx.judge.settings() if suite.uses_judge and ctx.judge is not None else None,
        "limit": limit,
        "seed": ctx.seed,
        "vectors": vectors,
    }


def suite_limits(limit: Limit, suites: Sequence[Suite], *, option: str = "limit") -> dict[str, int | None]:
    """Each suite's limit (items per data part): ``limit`` for every suite, or ``{suite: n}`` per suite.

    A dict need not name every suite (those it leaves out are not limited). A name in it that is not being
    run, or a limit below 1, is a :class:`ConfigError` (``option`` is the setting's name in the message).
    """
    names = [suite.name for suite in suites]
    if isinstance(limit, Mapping):
        unknown = [str(name) for name in limit if name not in names]
        if unknown:
            raise ConfigError(f"{option} names suite(s) {', '.join(map(repr, unknown))} that are not being run "
                              f"(running: {', '.join(names)})")
        limits = {name: limit.get(name) for name in names}
    else:
        limits = dict.fromkeys(names, limit)
    for name, n in limits.items():
        if n is not None and n <= 0:
            where = f" for suite {name!r}" if isinstance(limit, Mapping) else ""
            raise ConfigError(f"{option} must be a positive number of items per data part, got {n}{where}")
    return limits


def prepare_suites(ctx: EvalContext, suites: Sequence[Suite], *, data: Mapping[str, str | Path] | None,
                   limit: Limit, model_key: str, base_key: str | None) -> list[PreparedSuite]:
    """Check every suite's requirements, data and limit and compute its cache key (nothing runs the model)."""
    limits = suite_limits(limit, suites)
    overrides = split_data_overrides(data, suites)
    prepared = []
    for suite in suites:
        check_requirements(suite, ctx)
        parts = resolve_data_parts(suite, overrides.get(suite.name))
        items, info = load_items(suite, parts, limits[suite.name], ctx.seed)
        payload = suite_cache_payload(suite, ctx, info, model_key=model_key, base_key=base_key,
                                      limit=limits[suite.name])
        prepared.append(PreparedSuite(suite, parts, items, info, payload, cache_key(payload), limits[suite.name]))
    return prepared
