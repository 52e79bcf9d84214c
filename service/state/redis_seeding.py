"""A whole feature state written into a Redis store at once: `fraud-train state build
--state redis://...`, from a state replayed in memory.

Each record is written as the Redis store keeps it (`redis_store`: under its key, the first
version, with the state horizon as its lifetime), in pipelined batches of `_BATCH`
commands: one round trip per batch, not per record. The identity (`fraud:identity`) is
written first, so a server with other feature settings is refused at once.

Not atomic, unlike a directory's rename: servers must not use the database until the
build has ended; a build that failed leaves part of the state, which a build with
`replace` clears.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import chain
from typing import TypeVar

import redis

from service.config.settings import mask_url_password
from service.features import EntityKind
from service.features.state import TransactionRecord
from service.state.codec import encode_transaction
from service.state.errors import StateStoreError
from service.state.redis_store import IDENTITY_KEY, RecordKeys, lifetime_milliseconds

_BATCH = 2_000
_SCAN_COUNT = 1_000
_TIMEOUT_SECONDS = 30.0
_FIRST_VERSION = struct.pack("<Q", 1)
_OURS = b"fraud:*"
_T = TypeVar("_T")


class RedisTarget:
    """The database at `url`, for one build."""

    def __init__(self, url: str) -> None:
        self.shown = mask_url_password(url)
        self._client = redis.Redis.from_url(
            url, socket_timeout=_TIMEOUT_SECONDS, socket_connect_timeout=_TIMEOUT_SECONDS
        )

    def holds_state(self) -> bool:
        """Whether the database holds any feature state (of any settings)."""
        return any(True for _ in self._ours())

    def clear(self) -> int:
        """Delete every feature state key; how many."""
        deleted = 0
        for batch in _batches(self._ours(), _SCAN_COUNT):
            deleted += self._guarded(partial(self._unlink, batch))
        return deleted

    def write(
        self,
        identity: str,
        horizon_seconds: float,
        entities: Iterable[tuple[EntityKind, str, array[float]]],
        transactions: Iterable[TransactionRecord],
    ) -> None:
        """Write the identity, then every record, as `RedisStore` keeps them."""
        keys = RecordKeys(identity)
        lifetime = lifetime_milliseconds(horizon_seconds)
        expiry: tuple[bytes | int, ...] = (b"PX", lifetime) if lifetime else ()
        self._guarded(lambda: self._client.set(IDENTITY_KEY, identity.encode()))
        values = (
            (keys.entity(kind, key), _FIRST_VERSION + record.tobytes())
            for kind, key, record in entities
        )
        writes = (
            (keys.transaction(record.transaction.transaction_id), encode_transaction(record))
            for record in transactions
        )
        for batch in _batches(chain(values, _versioned(writes)), _BATCH):
            pipeline = self._client.pipeline(transaction=False)
            for key, value in batch:
                pipeline.execute_command("SET", key, value, *expiry)  # type: ignore[no-untyped-call]
            self._guarded(pipeline.execute)

    def _unlink(self, keys: list[bytes]) -> int:
        return int(self._client.unlink(*keys))

    def used_memory(self) -> int:
        """The server's memory in use, in bytes."""
        return int(self._guarded(lambda: self._client.info("memory"))["used_memory"])

    def close(self) -> None:
        self._client.close()

    def _ours(self) -> Iterator[bytes]:
        scan = self._client.scan_iter(match=_OURS, count=_SCAN_COUNT)
        while True:
            try:
                key = next(scan)
            except StopIteration:
                return
            except redis.RedisError as error:
                raise self._failure(error) from error
            yield key

    def _guarded(self, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except redis.RedisError as error:
            raise self._failure(error) from error

    def _failure(self, error: redis.RedisError) -> StateStoreError:
        return StateStoreError(f"cannot seed the feature state's Redis at {self.shown}: {error}")


def _versioned(writes: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
    for key, value in writes:
        yield key, _FIRST_VERSION + value


def _batches(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    batch: list[_T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
