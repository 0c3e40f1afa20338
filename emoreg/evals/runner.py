"""Run eval suites on a model: resolve data, use the cache, save records as they come, summarise.

Two entry points:

* :func:`evaluate_model` loads a model reference (``"default"``, a hub id, a
  directory, a ``.gguf`` file, a PEFT adapter or a Trainer checkpoint; see
  :mod:`emoreg.models.checkpoint`), its bundle, judge and base model, and calls
  :func:`run_suites`.
* :func:`run_suites` evaluates an already-loaded model (the eval callback and the demo use it).

For each suite the data parts are resolved (built-in files, or ``data``
overrides ``{"SUITE": path}`` for the first part and ``{"SUITE.PART": path}``
for others), items are read and limited per part with ``limit_items(items,
limit, seed)``, and a cache key is computed from everything that changes the
records (:func:`suite_cache_payload`). A complete cache entry is reused
without running the model; a partial one is resumed (items already recorded
are skipped), so an interrupted run or a failing judge endpoint loses nothing.
Every input problem (unknown suite or part, missing file, a suite needing a
bundle or judge that is absent) is raised before any suite runs.

Outputs: ``out_dir/results.json`` (the results dict) and ``out_dir/records.jsonl``
(every record with an added ``"suite"`` field), both written atomically, on
rank 0 only in distributed runs (every rank runs the suites, as ZeRO-3
generation needs all ranks; the cache is not used there).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from emoreg.errors import ConfigError
from emoreg.evals.cache import CacheEntry, cache_key, default_cache_root, file_sha256
from emoreg.evals.judges.base import Judge
from emoreg.evals.suites import SUITE_NAMES, parse_suite_names, suite_class, unknown_suite_error
from emoreg.evals.suites.base import EvalContext, Item, Record, Suite, limit_items
from emoreg.models.fingerprint import ModelIdentity, fingerprint_or_none, model_content_hash, model_identity
from emoreg.models.generation import GenerationSettings
from emoreg.regularization.config import regularised_emotions
from emoreg.utils.atomic import atomic_file
from emoreg.vectors.bundle import EmotionVectors
from emoreg.version import __version__

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
RECORDS_FILE = "records.jsonl"

SuiteSpec = str | Suite


@dataclass
class PreparedSuite:
    """A suite with its resolved data, limited items and cache key, ready to run."""

    suite: Suite
    parts: dict[str, Path]
    items: list[Item]
    data_info: dict[str, dict[str, Any]]
    payload: dict[str, Any]
    key: str


# ---------------------------------------------------------------------------------------------- inputs
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


def prepare_suites(ctx: EvalContext, suites: Sequence[Suite], *, data: Mapping[str, str | Path] | None,
                   limit: int | None, model_key: str, base_key: str | None) -> list[PreparedSuite]:
    """Check every suite's requirements and data and compute its cache key (nothing runs the model)."""
    if limit is not None and limit <= 0:
        raise ConfigError(f"limit must be a positive number of items per data part, got {limit}")
    overrides = split_data_overrides(data, suites)
    prepared = []
    for suite in suites:
        check_requirements(suite, ctx)
        parts = resolve_data_parts(suite, overrides.get(suite.name))
        items, info = load_items(suite, parts, limit, ctx.seed)
        payload = suite_cache_payload(suite, ctx, info, model_key=model_key, base_key=base_key, limit=limit)
        prepared.append(PreparedSuite(suite, parts, items, info, payload, cache_key(payload)))
    return prepared


# ---------------------------------------------------------------------------------------------- running
class _Progress:
    """A tqdm bar moved by ``ctx.advance`` calls or yielded records, whichever is further."""

    def __init__(self, name: str, total: int, done: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, desc=name, unit="item", disable=not enabled, leave=False)
        self.advanced = done
        self.yielded = done

    def advance(self, n: int = 1) -> None:
        self.advanced += n
        self._refresh()

    def record(self) -> None:
        self.yielded += 1
        self._refresh()

    def _refresh(self) -> None:
        target = min(max(self.advanced, self.yielded), self.bar.total)
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _normalise(record: Any, what: str) -> Any:
    """A JSON round trip (tuples become lists, numpy/torch scalars numbers), so fresh and cached records match."""
    try:
        return json.loads(json.dumps(record, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise RuntimeError(f"{what} is not JSON-serialisable: {exc}") from None


def _json_default(value: Any) -> Any:
    for method in ("tolist", "item"):
        if hasattr(value, method):
            return getattr(value, method)()
    raise TypeError(f"object of type {type(value).__name__} is not JSON-serialisable")


def run_prepared(ctx: EvalContext, prepared: PreparedSuite, entry: CacheEntry | None, *, progress: bool
                 ) -> tuple[list[Record], dict[str, Any], str]:
    """Run one suite (resuming from ``entry``), returning ``(records, metrics, cache status)``.

    Records come in item order, followed by any extra records (ids that are not item ids, e.g. a note
    on why a metric was skipped; a later extra with the same id replaces an earlier one). Every item
    must get exactly one record.
    """
    suite = prepared.suite
    if not suite.records_per_item:
        return _run_whole(ctx, prepared, entry, progress=progress)
    order = {item["id"]: i for i, item in enumerate(prepared.items)}
    if entry is not None and entry.is_complete():
        by_id, extras = _collect(entry.records(), order)
        if len(by_id) == len(order):
            return [by_id[i] for i in order] + list(extras.values()), entry.metrics(), "hit"
        logger.warning("eval cache %s is marked complete but lacks records; running the suite again", entry.directory)
    by_id, extras = _collect(entry.records(), order) if entry is not None else ({}, {})
    status = ("resumed" if by_id else "miss") if entry is not None else "off"
    remaining = [item for item in prepared.items if item["id"] not in by_id]
    if remaining:
        bar = _Progress(suite.name, len(order), len(by_id), progress)
        old_progress = ctx.progress
        ctx.progress = bar.advance
        try:
            for record in suite.run(ctx, remaining):
                record_id = record.get("id") if isinstance(record, dict) else None
                if not isinstance(record_id, str):
                    raise TypeError(f"suite {suite.name!r} yielded a record without a string id: {record!r:.200}")
                if record_id in by_id:
                    raise RuntimeError(f"suite {suite.name!r} yielded two records for item {record_id!r}")
                record = _normalise(record, f"suite {suite.name!r}: the record {record_id!r}")
                if entry is not None:
                    entry.append(record)
                if record_id in order:
                    by_id[record_id] = record
                    bar.record()
                else:
                    extras[record_id] = record
        finally:
            ctx.progress = old_progress
            bar.close()
    missing = [i for i in order if i not in by_id]
    if missing:
        raise RuntimeError(f"suite {suite.name!r} yielded no record for {len(missing)} item(s), e.g. "
                           f"{', '.join(map(repr, missing[:5]))}; the records it did yield are kept in the cache")
    records = [by_id[i] for i in order] + list(extras.values())
    metrics = _normalise(suite.summarize(records, ctx), f"suite {suite.name!r}: its metrics")
    if entry is not None:
        entry.complete(metrics)
    return records, metrics, status


def _run_whole(ctx: EvalContext, prepared: PreparedSuite, entry: CacheEntry | None, *, progress: bool
               ) -> tuple[list[Record], dict[str, Any], str]:
    """Run a suite whose records are not one per item (``records_per_item = False``) in one go.

    A complete cache entry is reused; an unfinished one is discarded and the suite runs again (its records
    only exist once all items were read).
    """
    suite = prepared.suite
    if entry is not None and entry.is_complete():
        return entry.records(), entry.metrics(), "hit"
    if entry is not None and entry.records():
        entry.reset()
    status = "miss" if entry is not None else "off"
    bar = _Progress(suite.name, len(prepared.items), 0, progress)
    old_progress = ctx.progress
    ctx.progress = bar.advance
    records: dict[str, Record] = {}
    try:
        for record in suite.run(ctx, prepared.items):
            record_id = record.get("id") if isinstance(record, dict) else None
            if not isinstance(record_id, str):
                raise TypeError(f"suite {suite.name!r} yielded a record without a string id: {record!r:.200}")
            if record_id in records:
                raise RuntimeError(f"suite {suite.name!r} yielded two records with id {record_id!r}")
            records[record_id] = _normalise(record, f"suite {suite.name!r}: the record {record_id!r}")
    finally:
        ctx.progress = old_progress
        bar.close()
    if entry is not None:
        for record in records.values():
            entry.append(record)
    out = list(records.values())
    metrics = _normalise(suite.summarize(out, ctx), f"suite {suite.name!r}: its metrics")
    if entry is not None:
        entry.complete(metrics)
    return out, metrics, status


def _collect(records: Sequence[Record], order: Mapping[str, int]) -> tuple[dict[str, Record], dict[str, Record]]:
    """Saved records split into item records (first one per id) and extra records (last one per id)."""
    items: dict[str, Record] = {}
    extras: dict[str, Record] = {}
    for record in records:
        if record["id"] in order:
            items.setdefault(record["id"], record)
        else:
            extras[record["id"]] = record
    return items, extras


def run_suites(
    ctx: EvalContext,
    suites: str | Sequence[SuiteSpec],
    *,
    data: Mapping[str, str | Path] | None = None,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    model_key: str | None = None,
    use_cache: bool = True,
    progress: bool = True,
    base_key: str | None = None,
    model_info: Mapping[str, Any] | None = None,
    vectors_ref: str | None = None,
    identity: ModelIdentity | None = None,
) -> dict[str, Any]:
    """Evaluate ``ctx.model`` on ``suites`` and return the results dict (see the module docstring).

    Args:
        ctx: the loaded model, tokenizer, bundle, judge, base model and settings.
        suites: names (``"all"``, ``"probes,capability"``, a list) or :class:`Suite` instances.
        data: data-file overrides ``{"SUITE": path, "SUITE.PART": path}``.
        limit: at most this many items per data part (a seeded random subset).
        out_dir: where to write ``results.json`` and ``records.jsonl`` (nothing written when ``None``).
        cache_dir: the cache root (default ``$EMOREG_CACHE/evals``); ``use_cache=False`` bypasses it.
        model_key: the model's identity in cache keys (default: the content hash of ``ctx.model``).
        base_key: the base model's identity in cache keys (default: its content hash; a base given as a
            loader callable is loaded for that unless ``base_key`` is given).
        model_info: extra fields of the results' ``"model"`` entry (``ref``, ``base``, ``emoreg_config``...).
        vectors_ref: how the bundle was named (recorded in the results).
        identity: ``ctx.model``'s fingerprint and content hash when the caller has them (then neither is
            computed again; the content hash is the default ``model_key``).

    The model is put in eval mode while suites run and every module's mode is restored afterwards.
    """
    suite_list = resolve_suites(suites)
    distributed, main_process = _rank_info()
    if identity is None and model_key is None:
        identity = model_identity(ctx.model)
    if model_key is None:
        model_key = identity.content_hash
    if base_key is None:
        base_key = _base_identity(ctx, model_key)
    prepared = prepare_suites(ctx, suite_list, data=data, limit=limit, model_key=model_key, base_key=base_key)
    if use_cache and distributed:
        logger.info("emoreg eval: distributed run, the eval cache is not used")
        use_cache = False
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    fingerprint = identity.fingerprint if identity is not None else fingerprint_or_none(ctx.model)
    results = _results_header(ctx, prepared, model_key, base_key, model_info, vectors_ref, limit,
                              fingerprint.to_dict() if fingerprint is not None else None)
    all_records: list[Record] = []
    with _eval_mode(ctx.model):
        for item in prepared:
            start = time.perf_counter()
            if use_cache:
                with CacheEntry(root, item.key, item.payload) as entry:
                    records, metrics, status = run_prepared(ctx, item, entry, progress=progress and main_process)
            else:
                records, metrics, status = run_prepared(ctx, item, None, progress=progress and main_process)
            seconds = time.perf_counter() - start
            suite = item.suite
            results["suites"][suite.name] = {
                "metrics": metrics,
                "n_records": len(records),
                "data": item.data_info,
                "settings": item.payload["settings"],
                "judge": ctx.judge.name if suite.uses_judge and ctx.judge is not None else None,
                "seconds": round(seconds, 3),
                "cache_key": item.key,
                "cache": status,
            }
            all_records.extend({**record, "suite": suite.name} for record in records)
            logger.info("emoreg eval: %s done in %.1f s (%d records, cache %s)", suite.name, seconds, len(records),
                        status)
    if out_dir is not None and main_process:
        write_outputs(out_dir, results, all_records)
    return results


def write_outputs(out_dir: str | Path, results: Mapping[str, Any], records: Sequence[Record]) -> None:
    """Write ``results.json`` and ``records.jsonl`` into ``out_dir``, each atomically."""
    out = Path(out_dir)
    with atomic_file(out / RESULTS_FILE) as handle:
        json.dump(results, handle, indent=2)
        handle.write("\n")
    with atomic_file(out / RECORDS_FILE) as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def _results_header(ctx: EvalContext, prepared: Sequence[PreparedSuite], model_key: str, base_key: str | None,
                    model_info: Mapping[str, Any] | None, vectors_ref: str | None, limit: int | None,
                    fingerprint: dict[str, Any] | None) -> dict[str, Any]:
    model = {"ref": None, "fingerprint": fingerprint, "content_hash": model_key, "base": None,
             "base_key": base_key, "emoreg_config": None, "train_info": None}
    model.update(model_info or {})
    judged = any(p.suite.uses_judge for p in prepared)
    return {
        "emoreg_version": __version__,
        "model": model,
        "vectors": _vectors_info(ctx, vectors_ref),
        "judge": ctx.judge.settings() if judged and ctx.judge is not None else None,
        "seed": ctx.seed,
        "limit": limit,
        "generation": ctx.generation.to_dict(),
        "suites": {},
    }


def _vectors_info(ctx: EvalContext, ref: str | None) -> dict[str, Any] | None:
    """The bundle's name, read layer, fingerprint and its base-model statistics at that layer."""
    if ctx.vectors is None:
        return None
    layer = ctx.read_layer()
    info: dict[str, Any] = {"ref": ref, "layer": layer, "fingerprint": ctx.vectors.content_hash(),
                            "emotions": ctx.vectors.emotions}
    if ctx.vectors.has_stats:
        stats = ctx.vectors.stats(layer)
        info["stats"] = {"mean": dict(zip(ctx.vectors.emotions, stats.mean.tolist(), strict=True)),
                         "std": dict(zip(ctx.vectors.emotions, stats.std.tolist(), strict=True))}
    return info


def _base_identity(ctx: EvalContext, model_key: str) -> str | None:
    if ctx.base_model is None:
        return None
    base = ctx.get_base_model()
    if base is ctx.model:
        return model_key
    return model_content_hash(base)


class _eval_mode:
    """Put a module in eval mode for the block and restore every submodule's own mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        for module, training in self.modes:
            module.training = training


def _rank_info() -> tuple[bool, bool]:
    """``(distributed, main process)`` from torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return True, dist.get_rank() == 0
    return False, True


# ---------------------------------------------------------------------------------------------- from a reference
def evaluate_model(
    model: str,
    *,
    suites: str | Sequence[SuiteSpec],
    out_dir: str | Path | None,
    vectors: str | EmotionVectors | None = "default",
    base: str | None = None,
    data: Mapping[str, str | Path] | None = None,
    limit: int | None = None,
    seed: int = 0,
    judge: str | Judge = "rule",
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    cache_dir: str | Path | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    progress: bool = True,
    use_cache: bool = True,
) -> dict[str, Any]:
    """Load ``model`` (any reference :func:`emoreg.models.checkpoint.load_for_eval` takes) and run the suites.

    ``base``: the base model reference for comparisons (KL, concealment); ``None`` means the base the
    checkpoint records (adapter base or ``emoreg_train.json``), ``"none"`` means no base. The bundle
    and judge are only loaded when a chosen suite needs them. For a checkpoint trained with emoreg, the
    regularised emotions (its ``emoreg_config.json``) become the concealment suite's target emotions.
    Writes ``out_dir/results.json`` and ``out_dir/records.jsonl`` and returns the results dict.
    """
    from emoreg.models.checkpoint import load_for_eval

    suite_list = resolve_suites(suites)
    split_data_overrides(data, suite_list)  # bad names or files fail before any model loads
    if limit is not None and limit <= 0:
        raise ConfigError(f"--limit must be a positive number of items per data part, got {limit}")
    needs_vectors = any(s.requires_vectors for s in suite_list)
    needs_judge = any(s.uses_judge for s in suite_list)
    bundle = _load_vectors(vectors) if needs_vectors else None
    judge_obj = _make_judge(judge) if needs_judge else None
    loaded, tokenizer, info = load_for_eval(model, dtype, device)
    if bundle is not None:
        bundle.check_model(loaded)
    base_ref = info.base if base is None else (None if str(base).lower() in ("", "none") else base)
    base_model: nn.Module | Callable[[], nn.Module] | None
    same = base_ref is not None and _ref_identity(base_ref) == _ref_identity(model)
    if base_ref is None:
        base_model = None
    elif same:
        base_model = loaded
    else:
        base_model = _lazy_loader(base_ref, dtype, device)
    ctx = EvalContext(
        model=loaded, tokenizer=tokenizer, vectors=bundle, judge=judge_obj, seed=seed, batch_size=batch_size,
        generation=GenerationSettings(max_new_tokens=max_new_tokens) if max_new_tokens else GenerationSettings(),
        base_model=base_model, target_emotions=_target_emotions(info.emoreg_config, bundle),
    )
    identity = model_identity(loaded)
    model_key = identity.content_hash
    base_key = None if base_ref is None else (model_key if same else _ref_identity(base_ref))
    model_info = {"ref": model, "kind": info.kind, "base": base_ref, "emoreg_config": info.emoreg_config,
                  "train_info": info.train_info, "adapter": info.adapter}
    vectors_ref = vectors if isinstance(vectors, str) else None
    return run_suites(ctx, suite_list, data=data, limit=limit, out_dir=out_dir, cache_dir=cache_dir,
                      model_key=model_key, use_cache=use_cache, progress=progress, base_key=base_key,
                      model_info=model_info, vectors_ref=vectors_ref, identity=identity)


def _target_emotions(emoreg_config: Mapping[str, Any] | None, vectors: EmotionVectors | None) -> list[str] | None:
    """The emotions a checkpoint's regulariser acted on (its ``emoreg_config.json``), if the bundle has them all."""
    if vectors is None:
        return None
    names = regularised_emotions({"emoreg_config": emoreg_config})
    if not names:
        return None
    missing = [e for e in names if e not in vectors.emotions]
    if missing:
        logger.warning("emoreg eval: the checkpoint regularised %s, which the bundle lacks; concealment reads "
                       "the default emotions", missing)
        return None
    return names


def _load_vectors(vectors: str | EmotionVectors | None) -> EmotionVectors | None:
    if vectors is None:
        return None
    return vectors if isinstance(vectors, EmotionVectors) else EmotionVectors.from_pretrained(vectors)


def _make_judge(judge: str | Judge) -> Judge:
    if isinstance(judge, Judge):
        return judge
    from emoreg.evals.judges import make_judge

    return make_judge(judge)


def _lazy_loader(ref: str, dtype: str, device: str) -> Callable[[], nn.Module]:
    def load() -> nn.Module:
        from emoreg.models.checkpoint import load_for_eval

        logger.info("emoreg eval: loading the base model %s", ref)
        return load_for_eval(ref, dtype, device)[0]

    return load


def _ref_identity(ref: str) -> str:
    """A model reference as a stable identity: the absolute path for local paths, else the reference."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref
