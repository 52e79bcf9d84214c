"""The feature state in a Redis-protocol server (Redis 7, Valkey): shared by every replica.

Optimistic concurrency, so that the features keep their one definition, in Python: a
session reads what it needs, the feature code computes in this process, and the writes are
committed only if nothing they were computed from changed meanwhile. Each record is one
key holding an 8-byte little-endian version, then the record's codec bytes
(`service.state.codec`). Leaving a session that wrote runs one Lua script (`_COMMIT`):
every key read must still have the version read (none, when it was absent), else nothing
is written and the session raises SessionConflict, which the engine answers by running it
again (two replicas scoring one card at the same instant: the second reads the first's
update, so no update is lost). Otherwise every written key gets the next version.

Round trips: entering a session fetches everything its plan names in one MGET; a read
outside the plan costs one more. A scored transaction costs two (MGET, then the commit)
plus one for its answer (`FeatureEngine.record_answer` is a session of its own). One round
trip would need the features computed inside the server, in Lua: a second definition of
every feature, which training's replay would not run.

Keys: `fraud:<12 hex digits of the identity's SHA-256>:<kind>:<id>`, kind `c`, `t`, `m`
(entities), `x` (transactions) or `a` (their answers, unversioned: written once). Ids
longer than `_MAX_ID_BYTES` are replaced by their digest. `fraud:identity` names the
feature settings the records were written with: another's is refused (StateMismatch).

Bounds: every record expires `horizon_seconds` of wall-clock time after its last write
(an answer with its transaction), so idle records go by themselves; the server bounds its
memory with `maxmemory` and `maxmemory-policy volatile-lru` (set on the server: every
record has an expiry, `fraud:identity` has none and stays). A dropped record is read as
new, as in the other stores. Counts for the metrics come from `RedisCensus`.

One server (with replicas of its own if wanted), not Redis Cluster: a session's keys
span hash slots, and the commit script needs them all on one node.

Failures: socket timeouts of `timeout_seconds` and no retry, so a slow or absent server
makes the session raise at once (the scoring core answers with the fallback) and a later
session reconnects by itself.
"""

from __future__ import annotations

import hashlib
import math
import struct
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.config.settings import mask_url_password
from service.core.domain import ScoreResult
from service.features.memory_store import Evictions
from service.features.state import (
    NO_PLAN,
    EntityKind,
    SessionConflict,
    SessionPlan,
    TransactionRecord,
)
from service.state.codec import (
    decode_entity,
    decode_transaction,
    encode_answer,
    encode_entity,
    encode_transaction,
    record_key,
)
from service.state.errors import StateMismatch, StateStoreError
from service.state.redis_census import RedisCensus, warn_if_unbounded

IDENTITY_KEY = b"fraud:identity"
_MAX_ID_BYTES = 256
_VERSION = struct.Struct("<Q")
_TRANSACTIONS = b"x"
_ANSWERS = b"a"
# Checks at open, the census: not on the scoring path, so they may wait longer.
_BACKGROUND_TIMEOUT_SECONDS = 2.0

# KEYS and ARGV after the five counts, in order: each key read and the version it had
# ('' when absent); each key written and its value; each (transaction, answer) pair and
# the answer, kept only while the transaction is, for as long; answers to forget (a
# transaction written anew, unanswered); keys whose expiry restarts.
_COMMIT = """
local ttl = tonumber(ARGV[1])
local reads, writes, answers = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local forgotten = tonumber(ARGV[5])
for i = 1, reads do
  if redis.call('GETRANGE', KEYS[i], 0, 7) ~= ARGV[5 + i] then return 0 end
end
local function keep(key, value, ms)
  if ms > 0 then redis.call('SET', key, value, 'PX', ms) else redis.call('SET', key, value) end
end
for i = reads + 1, reads + writes do keep(KEYS[i], ARGV[5 + i], ttl) end
local done = reads + writes
for i = 1, answers do
  local left = redis.call('PTTL', KEYS[done + 2 * i - 1])  -- -2: gone, -1: for ever
  if left ~= -2 then
    keep(KEYS[done + 2 * i], ARGV[5 + done + i], left == -1 and 0 or math.max(left, 1))
  end
end
done = done + 2 * answers
for i = 1, forgotten do redis.call('DEL', KEYS[done + i]) end
if ttl > 0 then
  for i = done + forgotten + 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
"""


class RedisStore:
    """A `StateStore` on the Redis server at `url`, opened by each process on its own."""

    def __init__(
        self,
        url: str,
        *,
        identity: str,
        horizon_seconds: float,
        timeout_seconds: float = 0.01,
        census_seconds: float = 30.0,
    ) -> None:
        """Connect to `url` for feature settings named `identity`: StateStoreError when the
        server cannot be reached, StateMismatch when it holds state of other settings."""
        self.url = mask_url_password(url)  # for messages
        self._pool = _pool(url, timeout_seconds, max_connections=None)
        self._client = redis.Redis(connection_pool=self._pool)
        self._commit = self._client.register_script(_COMMIT)  # loaded on first use
        self._keys = _Keys(identity)
        self._ttl_ms = _milliseconds(horizon_seconds)
        background = redis.Redis(
            connection_pool=_pool(url, _BACKGROUND_TIMEOUT_SECONDS, max_connections=1)
        )
        try:
            self._check_identity(background, identity)
            warn_if_unbounded(background)
        except redis.RedisError as error:
            background.connection_pool.disconnect()
            raise StateStoreError(
                f"cannot use the feature state's Redis at {self.url}: {error}"
            ) from error
        except StateMismatch:
            background.connection_pool.disconnect()
            raise
        self._census = RedisCensus(background, self._keys.prefix, census_seconds)

    @property
    def evictions(self) -> Evictions:
        """Records the server dropped, all replicas together (see `RedisCensus`)."""
        return self._census.evictions

    def records(self, kind: EntityKind | None = None) -> int:
        """Records held of `kind`, or transactions when None, as of the last census."""
        return self._census.records(kind)

    def census(self) -> None:
        """Count the records now, rather than at the next background census."""
        self._census.take()

    @contextmanager
    def session(self, plan: SessionPlan = NO_PLAN) -> Iterator[_Session]:
        """Fetch what `plan` names, yield the session, and commit its writes (see the
        module's docstring); SessionConflict when another writer got in first."""
        keys = self._keys.planned(plan)
        fetched = dict(zip(keys, _values(self._client.mget(keys)), strict=True)) if keys else {}
        session = _Session(self._client, self._keys, fetched)
        yield session
        if session.wrote and not self._commit(*session.commit_arguments(self._ttl_ms)):
            raise SessionConflict

    def close(self) -> None:
        """Stop the census and close every connection."""
        self._census.stop()
        self._pool.disconnect()

    def _check_identity(self, client: redis.Redis, identity: str) -> None:
        found = client.set(IDENTITY_KEY, identity.encode(), nx=True, get=True)
        if isinstance(found, bytes) and found != identity.encode():
            raise StateMismatch(
                f"the Redis at {self.url} holds feature state of settings "
                f"{found.decode(errors='replace')}, not {identity}: point state.url at "
                "another database, or empty this one (FLUSHDB) to start afresh"
            )


class _Session:
    """What one session read (with the versions) and will write: a `StateSession`."""

    __slots__ = (
        "_answers",
        "_client",
        "_fetched",
        "_forgotten",
        "_keys",
        "_touched",
        "_versions",
        "_writes",
    )

    def __init__(
        self, client: redis.Redis, keys: _Keys, fetched: dict[bytes, bytes | None]
    ) -> None:
        self._client = client
        self._keys = keys
        self._fetched = fetched
        self._versions: dict[bytes, bytes] = {}
        self._writes: dict[bytes, bytes] = {}
        self._answers: list[tuple[bytes, bytes, bytes]] = []
        self._touched: list[bytes] = []
        self._forgotten: list[bytes] = []

    @property
    def wrote(self) -> bool:
        return bool(self._writes or self._answers or self._forgotten)

    def entity(self, kind: EntityKind, key: str) -> array[float] | None:
        payload = self._read(self._keys.entity(kind, key))
        return None if payload is None else decode_entity(payload)

    def put_entity(self, kind: EntityKind, key: str, record: array[float]) -> None:
        self._write(self._keys.entity(kind, key), encode_entity(record))

    def transaction(self, transaction_id: str) -> TransactionRecord | None:
        key, answer_key = self._keys.transaction(transaction_id)
        if key not in self._fetched:
            fetched = _values(self._client.mget(key, answer_key))
            self._fetched.update(zip((key, answer_key), fetched, strict=True))
        payload = self._read(key)
        if payload is None:
            return None
        return decode_transaction(payload, self._fetched.get(answer_key))

    def put_transaction(self, record: TransactionRecord) -> None:
        key, answer_key = self._keys.transaction(record.transaction.transaction_id)
        existed = self._write(key, encode_transaction(record))
        if record.answer is None:
            # Written anew (an id idle past the horizon, reused): an old answer must never
            # answer the new transaction's retries.
            self._forgotten.append(answer_key)
        elif existed:
            self._touched.append(answer_key)  # its answer lives as long as it does

    def put_answer(self, transaction_id: str, answer: ScoreResult) -> None:
        key, answer_key = self._keys.transaction(transaction_id)
        self._answers.append((key, answer_key, encode_answer(answer)))

    def commit_arguments(self, ttl_ms: int) -> tuple[list[bytes], list[bytes | int]]:
        """The commit script's KEYS and ARGV (see `_COMMIT`)."""
        keys = [*self._versions, *self._writes]
        arguments: list[bytes | int] = [ttl_ms, len(self._versions), len(self._writes)]
        arguments += [len(self._answers), len(self._forgotten)]
        arguments += [*self._versions.values(), *self._writes.values()]
        for key, answer_key, answer in self._answers:
            keys += (key, answer_key)
            arguments.append(answer)
        return [*keys, *self._forgotten, *self._touched], arguments

    def _read(self, key: bytes) -> bytes | None:
        """The record of `key` as this session sees it, its version noted on first read."""
        written = self._writes.get(key)
        if written is not None:
            return written[_VERSION.size :]
        if key not in self._fetched:
            self._fetched[key] = _values([self._client.get(key)])[0]
        value = self._fetched[key]
        self._versions.setdefault(key, b"" if value is None else value[: _VERSION.size])
        return None if value is None else value[_VERSION.size :]

    def _write(self, key: bytes, payload: bytes) -> bool:
        """Buffer `payload` under the version after the one read; whether the key existed."""
        if key not in self._versions:
            self._read(key)  # a write computed from nothing read is still checked
        read = self._versions[key]
        version = _VERSION.unpack(read)[0] + 1 if read else 1
        self._writes[key] = _VERSION.pack(version) + payload
        return bool(read)


class _Keys:
    """The keys of one feature settings' records."""

    __slots__ = ("_answers", "_entities", "_transactions", "prefix")

    def __init__(self, identity: str) -> None:
        self.prefix = b"fraud:" + hashlib.sha256(identity.encode()).hexdigest()[:12].encode()
        self.prefix += b":"
        self._entities = {kind: self.prefix + kind.value.encode() + b":" for kind in EntityKind}
        self._transactions = self.prefix + _TRANSACTIONS + b":"
        self._answers = self.prefix + _ANSWERS + b":"

    def entity(self, kind: EntityKind, key: str) -> bytes:
        return self._entities[kind] + _id(key)

    def transaction(self, transaction_id: str) -> tuple[bytes, bytes]:
        """The keys of the transaction's record and of its answer."""
        raw = _id(transaction_id)
        return self._transactions + raw, self._answers + raw

    def planned(self, plan: SessionPlan) -> list[bytes]:
        keys = [self.entity(kind, key) for kind, key in plan.entities]
        if plan.transaction_id is not None:
            keys += self.transaction(plan.transaction_id)
        return keys


def _pool(url: str, timeout_seconds: float, *, max_connections: int | None) -> redis.ConnectionPool:
    """Connections that give up after `timeout_seconds` and never retry by themselves."""
    return redis.ConnectionPool.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
    )


def _values(replies: list[bytes | str | None]) -> list[bytes | None]:
    """Replies of GET and MGET as the client gives them without decode_responses: bytes."""
    return cast("list[bytes | None]", replies)


def _id(identifier: str) -> bytes:
    return record_key(identifier, _MAX_ID_BYTES)


def _milliseconds(seconds: float) -> int:
    """A record's lifetime in milliseconds; 0 (for ever) when unbounded."""
    return 0 if math.isinf(seconds) else max(1, round(seconds * 1000))
