"""The LMDB store with `writemap` (`state.writemap`): it computes what memory computes,
within its file's size; on a full disk its writes are refused with an exception (which
the scorer answers with the fallback, tests/service/core/test_scoring.py), the process
lives, and once there is room again the writes go through.

Without the blocks reserved ahead (`block_reserve`), the first write into a hole of the
mapping on a full disk kills the process with SIGBUS. The disk is a small tmpfs mounted in
a user and mount namespace of the child process's own, as `fraud-bench chaos` does."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import lmdb

from service.features import FeatureConfig, FeatureEngine, state_identity
from service.state.lmdb_store import LmdbLimits, LmdbStore
from tests.service.features.engine_io import T0, tx
from tests.service.state.shared_stores import assert_as_in_memory_across_a_reopening

CONFIG = FeatureConfig()
TMPFS_BYTES = 32 << 20
ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import json, sys
from pathlib import Path
from service.features import FeatureConfig, FeatureEngine, state_identity
from service.state.lmdb_store import LmdbLimits, LmdbStore
from tests.service.features.engine_io import T0, tx

disk = Path(sys.argv[1])
config = FeatureConfig()
store = LmdbStore(
    disk / "state",
    identity=state_identity(config),
    horizon_seconds=config.state_horizon_seconds,
    limits=LmdbLimits(100_000, 100_000, 256 << 20),  # a map eight times the disk
    writemap=True,
)
engine = FeatureEngine(config, store)
filler = disk / "filler"
with filler.open("wb", buffering=0) as file:
    for size in (1 << 20, 4096, 1):
        try:
            while file.write(b"\\0" * size) == size:
                pass
        except OSError:
            continue
def fates(numbers):
    kept = []
    for number in numbers:
        current = tx(number, T0 + number, card=f"c{number}", terminal=f"t{number}")
        try:
            engine.observe(current)
        except Exception as error:
            kept.append(type(error).__name__)
        else:
            kept.append("counted")
    return {fate: kept.count(fate) for fate in set(kept)}

full = fates(range(6_000))
filler.unlink()
room = fates(range(6_000, 6_200))
store.close()
print(json.dumps({"full": full, "room": room}))
"""


def test_a_full_disk_refuses_writes_and_the_process_lives(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = f"mount -t tmpfs -o size={TMPFS_BYTES},mode=0700 tmpfs {shlex.quote(str(disk))}"
    namespace = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c"]
    child = subprocess.run(
        [*namespace, f'{mount} && exec "$@"', "sh", sys.executable, "-c", CHILD, str(disk)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, (child.returncode, child.stderr[-2_000:])  # -7: SIGBUS
    fates = json.loads(child.stdout)
    assert set(fates["full"]) == {"counted", "NoRoomOnDisk"}, fates
    assert fates["full"]["NoRoomOnDisk"] > 2_000, fates  # once the reserve is used up
    assert fates["room"] == {"counted": 200}, fates


def _open(path: Path, limits: LmdbLimits) -> LmdbStore:
    return LmdbStore(
        path,
        identity=state_identity(CONFIG),
        horizon_seconds=CONFIG.state_horizon_seconds,
        limits=limits,
        writemap=True,
    )


def test_writemap_computes_what_memory_computes_across_a_reopening(tmp_path: Path) -> None:
    limits = LmdbLimits(10_000, 10_000, 256 << 20)
    assert_as_in_memory_across_a_reopening(CONFIG, lambda: _open(tmp_path, limits))
    store = _open(tmp_path, limits)
    assert 8 << 20 <= store.file_bytes() <= 16 << 20  # the pages in use, 8-10 MiB ahead
    store.close()


def test_a_full_map_with_writemap_makes_room_as_without(tmp_path: Path) -> None:
    """Three times what fits in a 16 MiB map: the least recently active are dropped, the
    file is never larger than the map (every block reserved, none beyond)."""
    store = _open(tmp_path, LmdbLimits(10**7, 10**7, 16 << 20))
    engine = FeatureEngine(CONFIG, store)
    failed = 0
    for number in range(6_000):
        try:
            engine.observe(tx(number, T0 + number, card=f"c{number}", terminal=f"t{number}"))
        except lmdb.MapFullError:
            failed += 1
    assert failed < 60
    assert store.evictions.capacity > 0
    assert store.file_bytes() == 16 << 20
    store.close()
