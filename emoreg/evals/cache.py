"""The eval cache: content hashes of models and data, cache keys, and resumable per-suite entries.

A cache entry is a directory ``<root>/<key>/`` holding ``records.jsonl`` (one
record per line, appended and flushed as soon as a suite yields it) and
``metrics.json`` (written atomically when the suite has finished). An entry
with ``metrics.json`` is complete and reused as it is; one without it is
resumed: items whose ``id`` is already recorded are not run again.

The key is a SHA-256 over everything that changes the records (see
:func:`cache_key`); the model enters it through its content hash
(:func:`emoreg.models.fingerprint.model_content_hash`), a bundle through
:meth:`EmotionVectors.content_hash <emoreg.vectors.bundle.EmotionVectors.content_hash>`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from emoreg.errors import ConfigError
from emoreg.utils.atomic import atomic_file

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
METRICS_FILE = "metrics.json"
KEY_FILE = "key.json"
LOCK_FILE = ".lock"


def default_cache_root() -> Path:
    """``$EMOREG_CACHE/evals`` (default ``~/.cache/emoreg/evals``)."""
    from emoreg.models.loading import cache_dir

    return cache_dir() / "evals"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_json(payload: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces; unknown objects as ``str``)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(payload: dict[str, Any]) -> str:
    """SHA-256 of :func:`canonical_json` of ``payload`` (everything that changes a suite's records)."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class CacheEntry:
    """One suite run's cache directory: read what is there, append records, mark complete.

    Use as a context manager: it takes an exclusive lock on the entry (another
    process writing the same entry is a :class:`ConfigError`), truncates a
    half-written last line left by a crash, and opens ``records.jsonl`` for appending.
    """

    def __init__(self, root: str | Path, key: str, payload: dict[str, Any] | None = None) -> None:
        self.directory = Path(root) / key
        self.key = key
        self.payload = payload
        self._handle = None
        self._lock = None

    @property
    def records_path(self) -> Path:
        return self.directory / RECORDS_FILE

    @property
    def metrics_path(self) -> Path:
        return self.directory / METRICS_FILE

    def is_complete(self) -> bool:
        return self.metrics_path.is_file()

    def __enter__(self) -> CacheEntry:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.directory / LOCK_FILE)
        try:
            if self.payload is not None and not (self.directory / KEY_FILE).is_file():
                with atomic_file(self.directory / KEY_FILE) as handle:
                    json.dump(self.payload, handle, indent=2, sort_keys=True, default=str)
            self._repair()
            self._handle = self.records_path.open("a", encoding="utf-8")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._lock is not None:
            _unlock(self._lock)
            self._lock = None

    def records(self) -> list[dict[str, Any]]:
        """The records saved so far, in the order they were written (unreadable lines skipped)."""
        return [record for record, _ in self._read()]

    def append(self, record: dict[str, Any]) -> None:
        """Save one record now (one JSON line, flushed to the OS)."""
        if self._handle is None:
            raise RuntimeError("CacheEntry.append outside its `with` block")
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def reset(self) -> None:
        """Drop the records saved so far (for suites that cannot resume part-way)."""
        if self._handle is None:
            raise RuntimeError("CacheEntry.reset outside its `with` block")
        self._handle.close()
        self._handle = self.records_path.open("w", encoding="utf-8")

    def metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics_path.read_text(encoding="utf-8"))

    def complete(self, metrics: dict[str, Any]) -> None:
        """Write ``metrics.json`` atomically: the entry is complete from now on."""
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
        with atomic_file(self.metrics_path) as handle:
            json.dump(metrics, handle, indent=2)

    def _read(self) -> list[tuple[dict[str, Any], int]]:
        """``(record, end offset)`` for every well-formed line."""
        if not self.records_path.is_file():
            return []
        out = []
        offset = 0
        with self.records_path.open("rb") as handle:
            for raw in handle:
                offset += len(raw)
                if not raw.endswith(b"\n"):
                    break  # a line cut short by a crash
                try:
                    record = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(record, dict) and isinstance(record.get("id"), str):
                    out.append((record, offset))
        return out

    def _repair(self) -> None:
        """Rewrite ``records.jsonl`` without lines a crash left unreadable (so appends start on a clean line)."""
        if not self.records_path.is_file():
            return
        good = self._read()
        size = self.records_path.stat().st_size
        lines = _count_lines(self.records_path)
        if len(good) == lines and (not good or good[-1][1] == size):
            return
        logger.warning("eval cache %s: dropping %d unreadable line(s) left by an interrupted run",
                       self.records_path, lines - len(good))
        with atomic_file(self.records_path) as handle:
            for record, _ in good:
                handle.write(json.dumps(record) + "\n")


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def _lock(path: Path):
    """An exclusive, non-blocking lock on ``path`` (POSIX ``flock``; no locking elsewhere)."""
    handle = path.open("a")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(f"another emoreg eval is writing the cache entry {path.parent}; wait for it to finish "
                          "or run with --no-cache") from None
    return handle


def _unlock(handle) -> None:
    try:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    except (ImportError, OSError):  # pragma: no cover
        pass
    handle.close()
