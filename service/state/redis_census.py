"""What the metrics read of a Redis feature state: records per kind and records dropped.

A scrape must cost nothing and never wait on the network, so a background thread counts
every `seconds` and the scrape reads the last figures. Counting every key would cost a
full SCAN, millions of keys at production size, in every replica: instead the census scans
up to `_SAMPLE_KEYS` keys from the start of the keyspace (hash order, so a fair sample of
the kinds) and scales by DBSIZE. A store smaller than the sample is counted exactly.

Evictions are the server's own counters (INFO stats): `expired_keys` (idle past the state
horizon) and `evicted_keys` (dropped by `maxmemory`, capacity), since the server started,
for every key of the server and every replica alike: each replica reports the same figure,
so aggregate them with max(), not sum(). Give the feature state a server of its own.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import cast

import redis
import structlog

from service.features.memory_store import Evictions
from service.features.state import EntityKind

_SCAN_COUNT = 1_000
_SAMPLE_KEYS = 10_000
TRANSACTION_KIND = b"x"  # the key kind of transactions; entities use EntityKind's
_SAFE_POLICIES = ("volatile-", "allkeys-")

_log = structlog.get_logger(__name__)


class RedisCensus:
    """The latest record counts and eviction counters, refreshed every `seconds` by a
    daemon thread through `client` (a connection of its own, off the scoring path)."""

    def __init__(self, client: redis.Redis, prefix: bytes, seconds: float) -> None:
        self.evictions = Evictions()
        self._client = client
        self._prefix = prefix
        self._counts: dict[bytes, int] = {}
        self._lock = threading.Lock()  # one census at a time on the one connection
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._every, args=(seconds,), name="redis-census", daemon=True
        )
        self._thread.start()

    def records(self, kind: EntityKind | None) -> int:
        """Records of `kind` (transactions when None) at the last census."""
        return self._counts.get(TRANSACTION_KIND if kind is None else kind.value.encode(), 0)

    def take(self) -> None:
        """Count now; redis.RedisError when the server does not answer."""
        with self._lock:
            stats = self._client.info("stats")
            counts, seen, complete = self._sample()
            if not complete and seen:
                scale = self._client.dbsize() / seen
                counts = Counter({kind: round(count * scale) for kind, count in counts.items()})
        self._counts = dict(counts)
        self.evictions = Evictions(idle=stats["expired_keys"], capacity=stats["evicted_keys"])

    def stop(self) -> None:
        """End the thread (after the census under way, if any) and close the connection."""
        self._stopped.set()
        self._thread.join()
        self._client.connection_pool.disconnect()

    def _sample(self) -> tuple[Counter[bytes], int, bool]:
        """Our keys per kind among the first `_SAMPLE_KEYS` or so of the keyspace, how many
        keys that scanned, and whether it was all of them."""
        counts: Counter[bytes] = Counter()
        kind_at = len(self._prefix)
        cursor, seen = 0, 0
        while seen < _SAMPLE_KEYS:
            cursor, found = self._client.scan(cursor, count=_SCAN_COUNT)
            keys = cast("list[bytes]", found)  # without decode_responses
            seen += len(keys)
            counts.update(
                key[kind_at : kind_at + 1] for key in keys if key.startswith(self._prefix)
            )
            if cursor == 0:
                return counts, seen, True
        return counts, seen, False

    def _every(self, seconds: float) -> None:
        while True:
            try:
                self.take()
            except redis.RedisError as error:  # the last figures stand; scoring says more
                _log.warning("state_census_failed", error=str(error))
            if self._stopped.wait(seconds):
                return


def warn_if_unbounded(client: redis.Redis) -> None:
    """Log a warning when the server has no memory bound, or one that refuses writes
    (`noeviction`) instead of dropping the least recently used records. Servers that hide
    CONFIG (managed ones) are taken on trust."""
    try:
        config = client.config_get("maxmemory*")
    except redis.ResponseError:
        return
    limit = int(config.get("maxmemory") or 0)
    policy = str(config.get("maxmemory-policy", ""))
    if limit == 0 or not policy.startswith(_SAFE_POLICIES):
        _log.warning(
            "state_unbounded",
            maxmemory=limit,
            maxmemory_policy=policy,
            advice="set maxmemory and maxmemory-policy volatile-lru on the Redis server",
        )
