"""The feature state store the settings name: the server's and `fraud-train state build`'s
one way to open it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.config.settings import StateSettings
from service.features import FeatureConfig, MemoryStore, state_identity
from service.state.lmdb_store import LmdbLimits, LmdbStore

if TYPE_CHECKING:
    from service.state.redis_store import RedisStore


def open_state(
    settings: StateSettings, feature_config: FeatureConfig
) -> LmdbStore | RedisStore | MemoryStore:
    """The store `settings` name, for features computed with `feature_config`.

    StateMismatch when an LMDB or Redis store holds state of other feature settings;
    StateStoreError when it cannot be opened or reached.
    """
    horizon = feature_config.state_horizon_seconds
    if settings.backend == "memory":
        return MemoryStore(horizon_seconds=horizon, max_records=settings.max_entities)
    if settings.backend == "redis":
        # Imported here: the Redis client is a tenth of a server's imports, and every
        # server on LMDB or memory (the default, each test's) would pay for it at start.
        from service.state.redis_store import RedisStore

        return RedisStore(
            settings.url,
            identity=state_identity(feature_config),
            horizon_seconds=horizon,
            timeout_seconds=settings.timeout_seconds,
        )
    return LmdbStore(
        settings.path,
        identity=state_identity(feature_config),
        horizon_seconds=horizon,
        limits=LmdbLimits(settings.max_entities, settings.max_transactions, settings.max_bytes),
        sync_seconds=settings.sync_seconds,
        writemap=settings.writemap,
    )
