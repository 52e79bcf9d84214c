"""The LMDB store's map with `writemap` (the default): the file grows with its data instead
of appearing as large as `max_bytes`, a worker process adopts the map another grew, and
`writemap` is used only on a file system that rewrites blocks in place."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from service.features import EntityKind, FeatureConfig, FeatureEngine, state_identity
from service.state import lmdb_map
from service.state.lmdb_map import grown, rewrites_in_place
from service.state.lmdb_store import LmdbLimits, LmdbStore
from tests.service.features.engine_io import T0, tx
from tests.service.state.shared_stores import assert_as_in_memory_across_a_reopening

CONFIG = FeatureConfig()
ROOT = Path(__file__).resolve().parents[3]
LIMITS = LmdbLimits(100_000, 100_000, 16 << 30)
SMALL_FIRST_MAP = 4 << 20


def _open(path: Path) -> LmdbStore:
    return LmdbStore(
        path,
        identity=state_identity(CONFIG),
        horizon_seconds=CONFIG.state_horizon_seconds,
        limits=LIMITS,
    )


def _terminals(engine: FeatureEngine, numbers: range) -> None:
    for number in numbers:
        engine.observe(tx(number, T0 + number, card=f"c{number}", terminal=f"t{number}"))


def _size(path: Path) -> int:
    return (path / "data.mdb").stat().st_size


def test_the_file_grows_with_its_data_not_to_max_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 16 GiB bound: the file starts at the first map and grows past it as terminals
    (4 KB each) fill it, a little ahead of its pages; reopened, it keeps its size and its
    records, and computes what memory computes."""
    monkeypatch.setattr(lmdb_map, "FIRST_MAP_BYTES", SMALL_FIRST_MAP)
    store = _open(tmp_path)
    assert store.writemap  # tmp_path is on ext4 or tmpfs here
    # A write transaction is given 8 MiB past the pages in use, the map 4 MiB more, rounded
    # up to whole MiB.
    assert _size(tmp_path) == 13 << 20
    _terminals(FeatureEngine(CONFIG, store), range(3_000))  # about 13 MiB of records
    grown_to = _size(tmp_path)
    assert grown_to > 3 * SMALL_FIRST_MAP
    # The blocks reserved are 8-10 MiB past the pages in use; the map, 8 MiB past them when
    # last grown, 4 MiB more, rounded up.
    assert store.file_bytes() <= grown_to <= store.file_bytes() + (5 << 20)
    assert store.records(EntityKind.TERMINAL) == 3_000
    store.close()
    store = _open(tmp_path)
    assert _size(tmp_path) == grown_to
    assert store.records(EntityKind.TERMINAL) == 3_000
    store.close()
    assert_as_in_memory_across_a_reopening(CONFIG, lambda: _open(tmp_path / "again"))
    assert _size(tmp_path / "again") < 16 << 20


WORKER = """
import json, sys
from pathlib import Path
import structlog
from service.features import EntityKind, FeatureConfig, FeatureEngine, state_identity
from service.state import lmdb_map, lmdb_store
from tests.service.features.engine_io import tx

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
# Less than the first worker's: its map, grown at opening, would be smaller than the file.
lmdb_map.FIRST_MAP_BYTES = 1 << 20
config = FeatureConfig()
store = lmdb_store.LmdbStore(
    Path(sys.argv[1]),
    identity=state_identity(config),
    horizon_seconds=config.state_horizon_seconds,
    limits=lmdb_store.LmdbLimits(100_000, 100_000, 16 << 30),
)
mapped = store._env.info()["map_size"]
print(json.dumps({"mapped": mapped}), flush=True)
sys.stdin.readline()  # the other worker grows the map meanwhile
vector = FeatureEngine(config, store).observe(tx(*json.loads(sys.argv[2])))
print(json.dumps({
    "mapped": store._env.info()["map_size"],
    "terminals": store.records(EntityKind.TERMINAL),
    "vector": vector,
}), flush=True)
store.close()
"""
# On the card and terminal the other worker wrote last, past the first worker's map.
LAST = (99_999, T0 + 2_999.5, "c2999", "t2999", 75.0)  # number, time, card, terminal, amount


def test_a_worker_adopts_the_map_another_grew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes on one store: the second maps the file as the first grew it (not
    its own first map, which would cut the file under the first), then the first grows the
    map far past the second's, which then writes (LMDB's MapResizedError, answered by
    mapping as much) and reads the first's records as memory would; the first writes on."""
    monkeypatch.setattr(lmdb_map, "FIRST_MAP_BYTES", SMALL_FIRST_MAP)
    store = _open(tmp_path)
    engine = FeatureEngine(CONFIG, store)
    _terminals(engine, range(10))
    first_map = _size(tmp_path)
    assert first_map > SMALL_FIRST_MAP
    with subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path), json.dumps(LAST)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as worker:
        assert worker.stdout is not None
        before = json.loads(worker.stdout.readline())
        assert before["mapped"] == first_map == _size(tmp_path)
        _terminals(engine, range(10, 3_000))
        grown_to = _size(tmp_path)
        assert grown_to > 2 * before["mapped"]  # past its map: its next begin is refused
        out, err = worker.communicate("go\n", timeout=60)
    assert worker.returncode == 0, err[-2_000:]
    assert f"state_map_resized              map_bytes={grown_to}" in err
    memory = FeatureEngine(CONFIG)
    _terminals(memory, range(3_000))
    expected = memory.observe(tx(*LAST))
    assert json.loads(out) == {"mapped": grown_to, "terminals": 3_000, "vector": expected}
    assert _size(tmp_path) == grown_to
    _terminals(engine, range(3_000, 3_100))  # this worker's map still fits the file
    assert store.records(EntityKind.TERMINAL) == 3_100
    store.close()


def test_the_metrics_and_sync_threads_live_through_remaps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scrape's thread counting records and the sync thread (every millisecond) while the
    scoring thread remaps the map again and again: neither raises, nor is the process
    killed (a read of the old map after it is unmapped), and the counts end right."""
    monkeypatch.setattr(lmdb_map, "FIRST_MAP_BYTES", 1 << 20)
    store = LmdbStore(
        tmp_path,
        identity=state_identity(CONFIG),
        horizon_seconds=CONFIG.state_horizon_seconds,
        limits=LIMITS,
        sync_seconds=0.001,
    )
    failures: list[BaseException] = []
    scoring = threading.Event()

    def scrape() -> None:
        while scoring.is_set():
            try:
                store.records(EntityKind.TERMINAL)
                store.records()
            except BaseException as error:  # any is a failure
                failures.append(error)

    engine = FeatureEngine(CONFIG, store)
    scoring.set()
    scraper = threading.Thread(target=scrape)
    scraper.start()
    sizes = set()
    try:
        for number in range(2_000):
            engine.observe(tx(number, T0 + number, card=f"c{number}", terminal=f"t{number}"))
            sizes.add(_size(tmp_path))
    finally:
        scoring.clear()
        scraper.join()
    assert failures == []
    assert len(sizes) >= 6  # remaps
    assert (store.records(EntityKind.TERMINAL), store.records()) == (2_000, 2_000)
    store.close()


def test_a_map_grows_ahead_of_its_data_within_max_bytes() -> None:
    mib = 1 << 20
    assert grown(4 * mib, 10 * mib, 16 << 30) == 42 * mib  # 32 MiB ahead
    assert grown(1 << 30, 1_024 * mib + 1, 16 << 30) == 1_153 * mib  # an eighth ahead
    assert grown(4 * mib, 10 * mib, 32 * mib) == 32 * mib  # the bound
    assert grown(64 * mib, 10 * mib, 32 * mib) == 64 * mib  # never smaller


@pytest.mark.parametrize(
    ("kind", "in_place"),
    [("ext4", True), ("xfs", True), ("tmpfs", True), ("btrfs", False), ("zfs", False)],
)
def test_writemap_only_where_blocks_are_rewritten_in_place(
    tmp_path: Path, kind: str, in_place: bool
) -> None:
    """The file system of the longest mount point holding the store decides."""
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        f"40 27 0:50 / {tmp_path}/state\\040dir rw,relatime shared:1 - {kind} /dev/x rw\n"
        f"41 27 0:51 / {tmp_path}/state\\040d rw,relatime - btrfs /dev/y rw\n"
    )
    (tmp_path / "state dir" / "lmdb").mkdir(parents=True)
    assert rewrites_in_place(tmp_path / "state dir" / "lmdb", mountinfo) is in_place
    assert rewrites_in_place(tmp_path, mountinfo)  # the root's ext4
    assert not rewrites_in_place(tmp_path, tmp_path / "missing")
