"""The LMDB store: the same features as in memory, across reopening, bounded, and refusing
state of other feature settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from service.core.domain import (
    Transaction,
)
from service.features import EntityKind, FeatureConfig, FeatureEngine, state_identity
from service.state.errors import StateMismatch
from service.state.lmdb_store import LmdbLimits, LmdbStore
from tests.service.features.engine_io import DAY, T0, tx
from tests.service.state.shared_stores import (
    assert_a_retry_after_a_reopening_gets_the_first_answer,
    assert_as_in_memory_across_a_reopening,
    stream,
)

CONFIG = FeatureConfig()
LIMITS = LmdbLimits(max_entities=10_000, max_transactions=10_000, max_bytes=256 << 20)


def _open(path: Path, config: FeatureConfig = CONFIG, limits: LmdbLimits = LIMITS) -> LmdbStore:
    return LmdbStore(
        path,
        identity=state_identity(config),
        horizon_seconds=config.state_horizon_seconds,
        limits=limits,
    )


def test_lmdb_computes_what_memory_computes_across_a_reopening(tmp_path: Path) -> None:
    """The same stream with outcomes gives identical vectors in memory and in LMDB, even
    when the store is closed and reopened halfway."""
    assert_as_in_memory_across_a_reopening(CONFIG, lambda: _open(tmp_path))


def test_a_counted_transaction_and_its_answer_outlive_the_process(tmp_path: Path) -> None:
    """A retry after a restart gets the first answer, and counts nothing."""
    store = assert_a_retry_after_a_reopening_gets_the_first_answer(CONFIG, lambda: _open(tmp_path))
    assert store.records(EntityKind.CARD) == 1
    store.close()


def test_state_of_other_feature_settings_is_refused(tmp_path: Path) -> None:
    """A store written with one label delay is not read with another."""
    _open(tmp_path).close()
    with pytest.raises(StateMismatch, match="fraud-train state build"):
        _open(tmp_path, FeatureConfig(label_delay_days=3))


def test_ids_longer_than_lmdb_keys_are_kept_apart(tmp_path: Path) -> None:
    """Two ids beyond LMDB's 511-byte key limit that share a long prefix are two cards."""
    store = _open(tmp_path)
    engine = FeatureEngine(CONFIG, store)
    engine.observe(tx(1, T0, card="é" * 300 + "a"))
    second = engine.observe(tx(2, T0 + 1, card="é" * 300 + "b"))
    assert second[6] == 1  # card_tx_count_1h: a card of its own
    assert store.records(EntityKind.CARD) == 2
    store.close()


def test_records_beyond_the_bound_and_idle_ones_are_evicted_and_counted(tmp_path: Path) -> None:
    """Fresh ids keep the store at its bound (give or take a sweep); records idle past the
    horizon go first."""
    limits = LmdbLimits(max_entities=500, max_transactions=500, max_bytes=256 << 20)
    store = _open(tmp_path, limits=limits)
    engine = FeatureEngine(CONFIG, store)
    engine.observe(tx(0, T0, card="early", terminal="early"))
    later = T0 + CONFIG.state_horizon_seconds + DAY
    for number in range(1, 5_000):
        engine.observe(tx(number, later + number, card=f"c{number}", terminal=f"t{number}"))
    assert store.evictions.idle >= 2  # the early card and terminal, at least
    assert store.evictions.capacity > 3 * 4_000  # cards, terminals and transactions
    for kind in EntityKind:
        assert store.records(kind) <= 500 + 2 * 1_024
    store.close()


def test_a_hot_copy_as_docs_operations_says_continues_as_the_original(tmp_path: Path) -> None:
    """`python -m lmdb copy --compact` taken while the store is open gives a store that
    computes, from then on, exactly what the original computes."""
    transactions = stream(1_000)
    original = _open(tmp_path / "state")
    engine = FeatureEngine(CONFIG, original)
    for current in transactions[:600]:
        engine.observe(current)
    copy = tmp_path / "backup"
    command = [sys.executable, "-m", "lmdb", "copy", "--compact", "-e", str(tmp_path / "state")]
    subprocess.run([*command, str(copy)], check=True, capture_output=True, timeout=60)
    restored = _open(copy)
    from_copy = FeatureEngine(CONFIG, restored)
    for current in transactions[600:]:
        assert from_copy.observe(current) == engine.observe(current)
    original.close()
    restored.close()


def test_bounds_larger_than_the_file_are_kept_to_the_file(tmp_path: Path) -> None:
    """Bounds that do not fit in max_bytes: the store drops the least recently active
    records to keep room (a file with no free page cannot even delete), so a flood of new
    ids three times what fits is taken with few failures, and the store keeps working
    (found by review: once full, nothing was evicted and every later transaction failed)."""
    store = _open(tmp_path, limits=LmdbLimits(10**7, 10**7, 16 << 20))
    engine = FeatureEngine(CONFIG, store)
    failed = [
        number
        for number in range(6_000)
        if not _counted(engine, tx(number, T0 + number, card=f"c{number}", terminal=f"t{number}"))
    ]
    assert len(failed) < 60, failed
    assert not [number for number in failed if number >= 5_500]
    assert store.evictions.capacity > 0
    assert store.file_bytes() <= 16 << 20
    store.close()


def _counted(engine: FeatureEngine, current: Transaction) -> bool:
    """Whether the store took `current`; False when its file is full."""
    try:
        engine.observe(current)
    except lmdb.MapFullError:
        return False
    return True


def test_the_store_is_the_server_s_alone(tmp_path: Path) -> None:
    """The store's directory is created 0700 and its files 0600, whatever the umask allows:
    it holds every card's, terminal's and merchant's history."""
    path = tmp_path / "state"
    previous = os.umask(0)
    try:
        _open(path).close()
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o700
    files = sorted(path.iterdir())
    assert [file.name for file in files] == ["data.mdb", "lock.mdb"]
    assert {file.stat().st_mode & 0o777 for file in files} == {0o600}
