"""The map of an LMDB store with `writemap`: where it may be used, and its size.

With `writemap`, LMDB sets the data file's size to its map's (`ftruncate`), so a map of
`max_bytes` would make a file that large, almost all of it a hole: `ls` and anything that
reads the file whole (a copy that does not keep holes, a checksum) would pay for
`max_bytes`. The map starts at `FIRST_MAP_BYTES` and grows ahead of the pages in use (by
`FIRST_MAP_BYTES` or an eighth, the larger), so the file stays about as large as its data.

Every worker process maps the file. A process that opens the store, grows its map or adopts
another's larger map sets the file's size to the size it maps, and no process may ever make
the file smaller than another maps it: a write past the end of the file is SIGBUS. So each
of these takes an exclusive lock on the store's directory (`directory_locked`) and maps at
least the file's size at that moment (`at_least_the_file`).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FIRST_MAP_BYTES = 32 << 20
_MIB = 1 << 20
# File systems that rewrite a file's allocated blocks in place, so that blocks reserved
# ahead (`block_reserve`) keep a write into the mapping from ever needing a new one. On any
# other (Btrfs and ZFS allocate anew on every overwrite; NFS), a write on a full disk could
# be SIGBUS: LMDB writes by system calls there instead.
_IN_PLACE_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "tmpfs"})


@contextmanager
def directory_locked(path: Path) -> Iterator[None]:
    """An exclusive `flock` on the store's directory, for as long as the block runs (the
    directory, not a file of LMDB's: LMDB's own locks are `fcntl` locks of lock.mdb)."""
    directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        yield
    finally:
        os.close(directory)  # releases the lock


def at_least_the_file(path: Path, wanted: int) -> int:
    """`wanted` bytes, or the data file's size when larger (another process maps that much):
    call it under `directory_locked`."""
    try:
        size = (path / "data.mdb").stat().st_size
    except FileNotFoundError:
        size = 0
    return max(wanted, size)


def grown(map_bytes: int, needed: int, max_bytes: int) -> int:
    """A map for `needed` bytes: an eighth more, or `FIRST_MAP_BYTES` more when that is
    larger (few remaps), in whole MiB, and `max_bytes` at most (never less than
    `map_bytes`)."""
    ahead = needed + max(FIRST_MAP_BYTES, needed // 8)
    return max(map_bytes, min(max_bytes, -(-ahead // _MIB) * _MIB))


def rewrites_in_place(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """Whether `path` (a directory that exists) is on a file system known to rewrite
    allocated blocks in place; False when that cannot be told."""
    target = os.path.realpath(path)
    best, kind = "", ""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        # "36 35 98:0 /root /mnt/point options ... - ext4 /dev/sda1 rw": the mount point is
        # the fifth field (spaces escaped as \040), the type the first after " - ".
        fields, _, tail = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not tail:
            continue
        point = parts[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, tail.split()[0]
    return kind in _IN_PLACE_FILE_SYSTEMS
