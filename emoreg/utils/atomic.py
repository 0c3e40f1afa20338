"""Write files and directories so that a crash never leaves half a result."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from emoreg.errors import ConfigError


def check_replaceable(target: str | Path, is_ours: Callable[[Path], bool], what: str) -> None:
    """Refuse to replace anything at ``target`` that is not ours.

    ``target`` may be missing, an empty directory, or a directory ``is_ours`` recognises (e.g. an existing
    bundle); a file, a symlink, or a non-empty directory of anything else is an error that names the path,
    so an output path mistyped as a project folder never deletes it. The parent must be writable.

    Raises:
        ConfigError: with the reason and what to do instead.
    """
    target = Path(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ConfigError(f"{target} exists and is not a directory; refusing to replace it with {what} "
                          "(choose a new path)")
    if target.is_dir() and any(target.iterdir()) and not is_ours(target):
        raise ConfigError(f"{target} is a non-empty directory that does not hold {what}; refusing to replace it "
                          "(choose a new path or an empty directory)")
    existing = _nearest_existing_parent(target)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {what} to {target}: {existing} is not writable")


@contextmanager
def atomic_directory(target: str | Path, *, is_ours: Callable[[Path], bool] | None = None,
                     what: str = "the output") -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` when the block succeeds.

    The temporary directory lives next to ``target`` (same filesystem, so the
    final rename is atomic). If the block raises, the temporary directory is
    removed and ``target`` is left exactly as it was. With ``is_ours``, an existing
    ``target`` is replaced only when :func:`check_replaceable` allows it (checked
    before the block runs, and again before the swap).
    """
    target = Path(target)
    if is_ours is not None:
        check_replaceable(target, is_ours, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _default_permissions(tmp)
    if is_ours is not None:
        try:
            check_replaceable(target, is_ours, what)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_file_target(target: str | Path, what: str = "the output") -> None:
    """Refuse an output file path that names a directory, or whose nearest existing parent is not writable
    (call it before the work that produces the file, so a bad ``--out`` fails at once)."""
    target = Path(target)
    if target.is_dir():
        raise ConfigError(f"{target} is a directory; give a file path for {what} (e.g. {target / 'scores.jsonl'})")
    existing = _nearest_existing_parent(target)
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {what} to {target}: {existing} is not writable")


@contextmanager
def atomic_file(target: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """Open a temporary file that replaces ``target`` when the block succeeds (a directory at ``target`` is
    refused before anything is written)."""
    target = Path(target)
    check_file_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with tmp.open(mode, **kwargs) as handle:
            yield handle
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _default_permissions(tmp)
    try:
        os.replace(tmp, target)
    except BaseException:  # e.g. target is a directory: leave nothing behind
        tmp.unlink(missing_ok=True)
        raise


def _nearest_existing_parent(target: Path) -> Path:
    """The closest ancestor of ``target`` that exists (where a new path under it would be created)."""
    existing = target.parent if target.parent != Path("") else Path(".")
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_permissions(path: Path) -> None:
    """Give what ``mkdtemp``/``mkstemp`` created (0700/0600) the usual umask-based permissions."""
    mask = _umask()
    if path.is_dir():
        path.chmod(0o777 & ~mask)
        for child in path.rglob("*"):
            child.chmod((0o777 if child.is_dir() else 0o666) & ~mask)
    else:
        path.chmod(0o666 & ~mask)
