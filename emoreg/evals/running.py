"""Run prepared eval suites on a loaded model: use the cache, keep records as they come, summarise.

:func:`run_suites` evaluates an already-loaded model (:func:`emoreg.evals.evaluate.evaluate_model`, the
eval callback and the demo use it): the suites are prepared first (:mod:`emoreg.evals.preparation`), then
each runs in turn with :func:`run_prepared`. A complete cache entry is reused without running the model; a
partial one is resumed (items already recorded are skipped), so an interrupted run or a failing judge endpoint
loses nothing.

Outputs: ``out_dir/results.json`` (the results dict) and ``out_dir/records.jsonl`` (every record with an added
``"suite"`` field), written by :func:`emoreg.evals.outputs.write_outputs`, on rank 0 only in distributed runs
(every rank runs the suites, as ZeRO-3 generation needs all ranks; the cache is not used there).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from emoreg.evals.cache import CacheEntry, default_cache_root
from emoreg.evals.outputs import write_outputs
from emoreg.evals.preparation import Limit, PreparedSuite, SuiteSpec, prepare_suites, resolve_suites
from emoreg.evals.suites.base import EvalContext, Record
from emoreg.models.fingerprint import ModelIdentity, fingerprint_or_none, model_content_hash, model_identity
from emoreg.version import __version__

logger = logging.getLogger(__name__)


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


def _normalize(record: Any, what: str) -> Any:
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

    A suite with one record per item (``records_per_item``): records come in item order, followed by any
    extra records (ids that are not item ids, e.g. a note on why a metric was skipped; a later extra with the
    same id replaces an earlier one); every item must get exactly one record, and each is saved to ``entry``
    as it comes, so an unfinished entry is resumed. Any other suite: records come in the order yielded, ids
    must be unique, and they are saved once the suite has finished (they only exist once all items were read),
    so an unfinished entry is discarded and the suite runs again. A complete entry is reused.
    """
    suite = prepared.suite
    per_item = suite.records_per_item
    order = {item["id"]: i for i, item in enumerate(prepared.items)} if per_item else {}
    if entry is not None and entry.is_complete():
        if not per_item:
            return entry.records(), entry.metrics(), "hit"
        by_id, extras = _collect(entry.records(), order)
        if len(by_id) == len(order):
            return [by_id[i] for i in order] + list(extras.values()), entry.metrics(), "hit"
        logger.warning("eval cache %s is marked complete but lacks records; running the suite again", entry.directory)
    if entry is not None and not per_item and entry.records():
        entry.reset()
    by_id, extras = _collect(entry.records(), order) if entry is not None and per_item else ({}, {})
    status = ("resumed" if by_id else "miss") if entry is not None else "off"
    remaining = [item for item in prepared.items if item["id"] not in by_id]
    if remaining or not per_item:
        bar = _Progress(suite.name, len(prepared.items), len(by_id), progress)
        old_progress = ctx.progress
        ctx.progress = bar.advance
        try:
            for record in suite.run(ctx, remaining):
                record_id = record.get("id") if isinstance(record, dict) else None
                if not isinstance(record_id, str):
                    raise TypeError(f"suite {suite.name!r} yielded a record without a string id: {record!r:.200}")
                if record_id in by_id:
                    raise RuntimeError(f"suite {suite.name!r} yielded two records for item {record_id!r}")
                if not per_item and record_id in extras:
                    raise RuntimeError(f"suite {suite.name!r} yielded two records with id {record_id!r}")
                record = _normalize(record, f"suite {suite.name!r}: the record {record_id!r}")
                if entry is not None and per_item:
                    entry.append(record)
                if record_id in order:
                    by_id[record_id] = record
                    bar.record()
                else:
                    extras[record_id] = record
        finally:
            ctx.progress = old_progress
            bar.close()
    if entry is not None and not per_item:
        for record in extras.values():
            entry.append(record)
    missing = [i for i in order if i not in by_id]
    if missing:
        raise RuntimeError(f"suite {suite.name!r} yielded no record for {len(missing)} item(s), e.g. "
                           f"{', '.join(map(repr, missing[:5]))}; the records it did yield are kept in the cache")
    records = [by_id[i] for i in order] + list(extras.values())
    metrics = _normalize(suite.summarize(records, ctx), f"suite {suite.name!r}: its metrics")
    if entry is not None:
        entry.complete(metrics)
    return records, metrics, status


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
    limit: Limit = None,
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
        limit: at most this many items per data part (a seeded random subset): one number for every suite,
            or ``{suite: n}`` (suites it leaves out are not limited; the results record it per suite).
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
    recorded_limit = {p.suite.name: p.limit for p in prepared} if isinstance(limit, Mapping) else limit
    results = _results_header(ctx, prepared, model_key, base_key, model_info, vectors_ref, recorded_limit,
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


def _results_header(ctx: EvalContext, prepared: Sequence[PreparedSuite], model_key: str, base_key: str | None,
                    model_info: Mapping[str, Any] | None, vectors_ref: str | None,
                    limit: int | dict[str, int | None] | None, fingerprint: dict[str, Any] | None
                    ) -> dict[str, Any]:
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
