"""Blocks of an LMDB data file reserved ahead of the pages in use, for `writemap`.

With `writemap`, LMDB writes pages in its mapping of the file (`lmdb_map`: somewhat larger
than the pages in use); the file beyond the pages ever written is a hole. A write into a
hole the file system cannot fill (a full disk, a full tmpfs) is SIGBUS, which kills the
process: a Python exception is never raised. Blocks allocated beforehand
(`posix_fallocate`) are overwritten in place, so no write into them needs a new block; that
holds on ext4, XFS and tmpfs, not on copy-on-write file systems (Btrfs, ZFS), which
allocate anew on every overwrite.
"""

from __future__ import annotations

import os
from pathlib import Path

import lmdb


class NoRoomOnDisk(lmdb.Error):
    """The file system has no blocks left for what the next write transaction may add:
    nothing is written (an `lmdb.Error`, as a full map is)."""


class BlockReserve:
    """Keeps the data file of the store in `path` allocated ahead of its pages in use."""

    def __init__(self, env: lmdb.Environment, path: Path) -> None:
        self._env = env
        self.map_bytes = int(env.info()["map_size"])
        self._page_bytes = int(env.stat()["psize"])
        self._data = os.open(path / "data.mdb", os.O_RDWR | os.O_CLOEXEC)
        self._reserved = 0
        # The reader table, mapped from lock.mdb by every process, is as sparse.
        lock = os.open(path / "lock.mdb", os.O_RDWR | os.O_CLOEXEC)
        try:
            _allocate(lock, 0, os.fstat(lock).st_size)
        finally:
            os.close(lock)

    def in_use(self) -> int:
        """Bytes of the file in pages written: the map's pages beyond are holes, or
        reserved."""
        return (int(self._env.info()["last_pgno"]) + 1) * self._page_bytes

    def remapped(self) -> None:
        """The map's size changed (`Environment.set_mapsize`)."""
        self.map_bytes = int(self._env.info()["map_size"])

    def ensure(self, in_use: int, growth: int) -> None:
        """Blocks for `growth` bytes past `in_use` (up to the map's end), reserved a quarter
        of `growth` beyond when more are needed (fewer calls, little kept ahead);
        NoRoomOnDisk when the file system cannot give them.

        Called within a write transaction, under LMDB's writer lock: no other process adds
        pages meanwhile, and `growth` must exceed what this transaction may add.
        """
        needed = min(self.map_bytes, in_use + growth)
        if needed <= self._reserved:
            return
        for target in (min(self.map_bytes, needed + growth // 4), needed):
            try:
                _allocate(self._data, self._reserved, target - self._reserved)
            except OSError as error:
                failure = error
                continue
            self._reserved = target
            return
        raise NoRoomOnDisk(f"no blocks left for the feature state: {failure}") from failure

    def close(self) -> None:
        os.close(self._data)


def _allocate(fd: int, offset: int, length: int) -> None:
    if length > 0:
        os.posix_fallocate(fd, offset, length)
