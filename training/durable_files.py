"""Crash-safe file writes: fsync, atomic replacement, durable appends, an exclusive lock.

A rename or a new directory entry survives a crash only once its directory is fsynced, so
every helper that creates or renames an entry also fsyncs the parent. A reader of a file
replaced here sees the old content or the new, never a mix.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def make_dir(path: Path) -> None:
    """Create directory `path` and its parents if missing, its own entry made durable."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        fsync_path(path.parent)


def replace_atomically(path: Path, text: str) -> None:
    """Write `text` aside, make it durable, then rename it over `path`."""
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        _write_synced(aside, text, mode="w")
        aside.replace(path)
    finally:
        aside.unlink(missing_ok=True)
    fsync_path(path.parent)


def append_durably(path: Path, text: str) -> None:
    """Append `text` to `path` and flush it to disk; a new file's entry is made durable too."""
    created = not path.exists()
    _write_synced(path, text, mode="a")
    if created:
        fsync_path(path.parent)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path`, created if absent, for the block."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _write_synced(path: Path, text: str, *, mode: str) -> None:
    with path.open(mode, encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
