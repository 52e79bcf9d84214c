"""Transactions idle past the state horizon leave the LMDB store as fast as new ones come:
the store's size is the horizon's traffic, not its bound (found by the 15-minute soak: at
1,200 swipes/s the records grew by one a swipe to the bound, since the idle sweep read
1,024 records every 16,384 writes)."""

from __future__ import annotations

from pathlib import Path

from service.features import FeatureConfig, FeatureEngine, state_identity
from service.state.lmdb_store import LmdbLimits, LmdbStore
from tests.service.features.engine_io import T0, tx

CONFIG = FeatureConfig()
HORIZONS = 4
SWIPES = 20_000


def test_transactions_past_the_horizon_are_evicted_as_fast_as_swipes_arrive(
    tmp_path: Path,
) -> None:
    """A steady stream over four horizons, bounds far above it: at the end the store holds
    about one horizon of transactions (within a sweep's lag), all the rest evicted as idle
    and none for capacity."""
    store = LmdbStore(
        tmp_path,
        identity=state_identity(CONFIG),
        horizon_seconds=CONFIG.state_horizon_seconds,
        limits=LmdbLimits(max_entities=10**6, max_transactions=10**6, max_bytes=1 << 30),
    )
    engine = FeatureEngine(CONFIG, store)
    spacing = HORIZONS * CONFIG.state_horizon_seconds / SWIPES
    for number in range(SWIPES):
        engine.observe(tx(number, T0 + number * spacing, card=f"c{number % 97}"))
    in_horizon = SWIPES // HORIZONS
    assert store.records() <= 1.5 * in_horizon, store.records()
    assert store.evictions.idle >= SWIPES - 1.5 * in_horizon
    assert store.evictions.capacity == 0
    store.close()
