"""The feature state in a Redis-protocol server (Redis 7, Valkey): shared by every replica.

A scored transaction is counted by the server itself, in one round trip
(`redis_swipes.SWIPE`, one Lua script over the transaction's keys): it returns the
records as they were and writes them as the swipe leaves them; the feature code then
computes in this process from those very records, so the features keep their one
definition in Python, and a test holds the script to the same bytes. The answer, decided
from those features, is sent after it without waiting (`_Wire.later`): one round trip
waited for per scored transaction, and no session ever runs again for another replica.

Everything else (outcomes, an answer kept after the fact, sessions without a swipe) is
optimistic: a session reads what its plan names in one MGET, the code computes, and the
writes are committed only if nothing they were computed from changed meanwhile. Each
record is one key holding an 8-byte little-endian version, then the record's codec bytes
(`service.state.codec`). Leaving a session that wrote runs one Lua script (`_COMMIT`):
every key read must still have the version read (none, when it was absent), else nothing
is written and the session raises SessionConflict, which the engine answers by running it
again. Otherwise every written key gets the next version. A `put_counted` (a terminal's or
merchant's count) is applied by `_COMMIT` to the record the server holds, unchecked,
since counts commute (`tiles.apply_count`, mirrored in a few lines of Lua and held to the
same bytes by a test).

Keys: `fraud:<12 hex digits of the identity's SHA-256>:<kind>:<id>`, kind `c`, `t`, `m`
(entities) or `x` (transactions, with their answers). Ids longer than `_MAX_ID_BYTES`
are replaced by their digest. `fraud:identity` names the
feature settings the records were written with: another's is refused (StateMismatch).

Bounds: every record expires `horizon_seconds` of wall-clock time after its last write,
so idle records go by themselves; the server bounds its memory with `maxmemory` and
`maxmemory-policy volatile-lru` (set on the server: every record has an expiry,
`fraud:identity` has none and stays). A dropped record is read as new, as in the other
stores. Counts for the metrics come from `RedisCensus`.

One server (with replicas of its own if wanted), not Redis Cluster: a session's keys
span hash slots, and the commit script needs them all on one node.

Failures: socket timeouts of `timeout_seconds` and no retry, so a slow or absent server
makes the session raise at once (the scoring core answers with the fallback) and a later
session reconnects by itself. A swipe whose reply timed out may still have been run by the
server (a stalled one runs what it received once it resumes): the transaction is then
counted, once, without an answer, and a retry of it gets the fallback answer, as after a
crash between counting and answering.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import struct
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.config.settings import mask_url_password
from service.features.memory_store import Evictions
from service.features.state import (
    NO_PLAN,
    EntityKind,
    SessionConflict,
    SessionPlan,
    Swipe,
    TileCount,
    TransactionRecord,
)
from service.state.codec import (
    decode_entity,
    decode_transaction,
    encode_entity,
    encode_transaction,
    record_key,
    record_time,
)
from service.state.errors import StateMismatch, StateStoreError
from service.state.redis_census import TRANSACTION_KIND, RedisCensus, warn_if_unbounded
from service.state.redis_swipes import SWIPE, swipe_arguments
from service.state.ring_lua import COUNT_IN_RING

IDENTITY_KEY = b"fraud:identity"
_MAX_ID_BYTES = 256
_VERSION = struct.Struct("<Q")
# Checks at open, the census: not on the scoring path, so they may wait longer.
_BACKGROUND_TIMEOUT_SECONDS = 2.0

# KEYS: each key read, each key written, each key counted. ARGV: the lifetime (ms, 0: for
# ever), the numbers of reads and writes, the state horizon (s); the version each read had
# ('' when absent); each value written; for each key counted, the record to keep if the
# server holds none or one idle past the horizon ('' when the session read a live one: if
# it is gone meanwhile, the session runs again), the count's time, its number of rings and
# (base, tiles, head index, tile) of each. Nothing is written unless every check passes.
_COMMIT = (
    r"""
local ttl, reads, writes = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
for i = 1, reads do
  if redis.call('GETRANGE', KEYS[i], 0, 7) ~= ARGV[4 + i] then return 0 end
end
-- A record is its 8-byte version, then little-endian doubles: double i at byte 8 + 8i.
local function double(key, i)
  return (struct.unpack('<d', redis.call('GETRANGE', key, 8 + 8 * i, 15 + 8 * i)))
end
local function next_version(version)
  if version == '' then return struct.pack('<I4I4', 1, 0) end
  local low, high = struct.unpack('<I4I4', version)
  if low == 4294967295 then return struct.pack('<I4I4', 0, high + 1) end
  return struct.pack('<I4I4', low + 1, high)
end
local counts, at = {}, 5 + reads + writes
for k = reads + writes + 1, #KEYS do
  local fallback, time, rings = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local version = redis.call('GETRANGE', KEYS[k], 0, 7)
  local anew = version == '' or double(KEYS[k], 0) < time - horizon
  if anew and fallback == '' then return 0 end
  counts[#counts + 1] = {KEYS[k], version, anew, fallback, time, rings, at + 3}
  at = at + 3 + 4 * rings
end
local function keep(key, value)
  if ttl > 0 then redis.call('SET', key, value, 'PX', ttl) else redis.call('SET', key, value) end
end
for i = reads + 1, reads + writes do keep(KEYS[i], ARGV[4 + i]) end
-- `tiles.apply_count`, in place: only the spans it changes are written.
"""
    + COUNT_IN_RING
    + r"""
local HEADER_DOUBLES = 4
for _, count in ipairs(counts) do
  local key, version, anew, fallback, time, rings, at = unpack(count)
  if anew then
    keep(key, next_version(version) .. fallback)
  else
    local function set(index, bytes) redis.call('SETRANGE', key, 8 + 8 * index, bytes) end
    local function read(index) return double(key, index) end
    -- The version, the latest time and the rings' heads lead the record: read at once.
    local header = redis.call('GETRANGE', key, 0, 15 + 8 * HEADER_DOUBLES)
    local function leading(index) return (struct.unpack('<d', header, 9 + 8 * index)) end
    local latest = leading(0)
    if time > latest then latest = time end
    redis.call('SETRANGE', key, 0, next_version(version) .. struct.pack('<d', latest))
    for r = 1, rings do
      local base, tiles = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
      local head_index, tile = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
      at = at + 4
      local head = head_index <= HEADER_DOUBLES and leading(head_index) or double(key, head_index)
      count_in_ring(base, tiles, head_index, tile, head, read, set)
    end
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  end
end
return 1
"""
)
_SCRIPTS = (_COMMIT, SWIPE)


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
        self._wire = _Wire(self._pool)
        self._keys = RecordKeys(identity)
        self._ttl_ms = lifetime_milliseconds(horizon_seconds)
        self._horizon_seconds = horizon_seconds
        # Lua reads "inf" as a number only on some platforms' strtod: spell it out.
        self._horizon = b"1e300" if math.isinf(horizon_seconds) else repr(horizon_seconds).encode()
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

    @property
    def round_trips(self) -> int:
        """Replies the scoring path waited for, since this store was opened (for tests and
        measurements: a scored transaction costs one)."""
        return self._wire.round_trips

    def census(self) -> None:
        """Count the records now, rather than at the next background census."""
        self._census.take()

    applies_swipes = True
    """Scored transactions are counted by the server (`redis_swipes`): one round trip."""

    @contextmanager
    def session(self, plan: SessionPlan = NO_PLAN) -> Iterator[_Session]:
        """Fetch what `plan` names, yield the session, and commit its writes (see the
        module's docstring); SessionConflict when another writer got in first. A plan with
        a swipe is counted on the way in, its answer sent on the way out without waiting."""
        if plan.swipe is not None:
            with self._swipe_session(plan, plan.swipe) as session:
                yield session
            return
        keys = self._keys.planned(plan)
        fetched = dict(zip(keys, self._wire.call(b"MGET", *keys), strict=True)) if keys else {}
        session = _Session(self._wire, self._keys, fetched, self._horizon_seconds)
        yield session
        arguments = session.commit_arguments(self._ttl_ms, self._horizon) if session.wrote else None
        if arguments is not None and not self._wire.commit(*arguments):
            raise SessionConflict

    @contextmanager
    def _swipe_session(self, plan: SessionPlan, swipe: Swipe) -> Iterator[_Session]:
        keys = self._keys.planned(plan)  # transaction last; the previous card, if any, before
        transaction_key = keys[-1]
        script_keys = [transaction_key, *keys[:-1]]
        reply = self._wire.swipe(script_keys, swipe_arguments(swipe, self._ttl_ms, self._horizon))
        fetched: dict[bytes, bytes | None] = {transaction_key: reply[1]}
        session = _Session(self._wire, self._keys, fetched, self._horizon_seconds)
        if reply[0]:  # counted: the records as the server held them before
            entity_keys = keys[:-1]
            if swipe.previous_card_id is not None:  # first: it may be the card itself
                fetched[entity_keys[-1]] = reply[3]
            fetched[entity_keys[0]], fetched[entity_keys[1]] = reply[2], reply[4]
            if swipe.transaction.merchant_id:
                fetched[entity_keys[2]] = reply[5]
            session.counted_by_server(entity_keys, transaction_key, reply[1])
        yield session
        if not session.wrote:
            return
        arguments = session.commit_arguments(self._ttl_ms, self._horizon)
        if session.only_the_answer():
            self._wire.commit_later(*arguments)  # nothing waits on it: see _Wire
        elif not self._wire.commit(*arguments):
            raise SessionConflict

    def close(self) -> None:
        """Stop the census and close every connection."""
        self._census.stop()
        self._wire.close()
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
        "_applied",
        "_counts",
        "_fetched",
        "_horizon",
        "_keys",
        "_unanswered",
        "_versions",
        "_wire",
        "_writes",
    )

    def __init__(
        self, wire: _Wire, keys: RecordKeys, fetched: dict[bytes, bytes | None], horizon: float
    ) -> None:
        self._wire = wire
        self._horizon = horizon
        self._keys = keys
        self._fetched = fetched
        self._versions: dict[bytes, bytes] = {}
        self._writes: dict[bytes, bytes] = {}
        self._counts: dict[bytes, tuple[bytes, TileCount]] = {}
        self._applied: frozenset[bytes] = frozenset()
        self._unanswered: bytes | None = None

    @property
    def wrote(self) -> bool:
        return bool(self._writes or self._counts)

    def counted_by_server(
        self, entity_keys: list[bytes], transaction_key: bytes, held: bytes | None
    ) -> None:
        """The swipe script counted this session's transaction: its writes to `entity_keys`
        are the server's already, and its transaction's record is the server's unanswered
        one (the version after `held`), which only an answer changes."""
        self._applied = frozenset(entity_keys)
        self._unanswered = transaction_key
        held_version = _VERSION.unpack_from(held)[0] if held else 0
        self._versions[transaction_key] = _VERSION.pack(held_version + 1)

    def only_the_answer(self) -> bool:
        """Whether all this session writes is its counted transaction's answer."""
        return (
            not self._counts
            and self._writes.keys() == {self._unanswered}
            and self._versions.keys() == {self._unanswered}
        )

    def entity(self, kind: EntityKind, key: str) -> array[float] | None:
        payload = self._read(self._keys.entity(kind, key))
        return None if payload is None else decode_entity(payload)

    def put_entity(self, kind: EntityKind, key: str, record: array[float]) -> None:
        name = self._keys.entity(kind, key)
        if name not in self._applied:
            self._write(name, encode_entity(record))

    def put_counted(
        self, kind: EntityKind, key: str, record: array[float], count: TileCount
    ) -> None:
        """The count is applied by the commit to the record the server holds, whatever
        other replicas counted since this session read it (counts commute), so a busy
        terminal or merchant never makes a session run again; `record` is kept only when
        the server holds none (or one idle past the horizon)."""
        name = self._keys.entity(kind, key)
        if name in self._applied:
            return
        self._versions.pop(name, None)
        read = self._fetched.get(name)
        live = read is not None and record_time(read[_VERSION.size :]) >= count.time - self._horizon
        self._counts[name] = (b"" if live else encode_entity(record), count)

    def transaction(self, transaction_id: str) -> TransactionRecord | None:
        payload = self._read(self._keys.transaction(transaction_id))
        return None if payload is None else decode_transaction(payload)

    def put_transaction(self, record: TransactionRecord) -> None:
        name = self._keys.transaction(record.transaction.transaction_id)
        if name == self._unanswered and record.answer is None:
            return  # as the swipe script kept it
        self._write(name, encode_transaction(record))

    def commit_arguments(
        self, ttl_ms: int, horizon: bytes
    ) -> tuple[list[bytes], list[bytes | int]]:
        """The commit script's KEYS and ARGV (see `_COMMIT`)."""
        keys = [*self._versions, *self._writes, *self._counts]
        arguments: list[bytes | int] = [ttl_ms, len(self._versions), len(self._writes), horizon]
        arguments += [*self._versions.values(), *self._writes.values()]
        for payload, count in self._counts.values():
            arguments += (payload, repr(count.time).encode(), len(count.rings))
            for ring in count.rings:
                arguments += ring
        return keys, arguments

    def _read(self, key: bytes) -> bytes | None:
        """The record of `key` as this session sees it, its version noted on first read."""
        written = self._writes.get(key)
        if written is not None:
            return written[_VERSION.size :]
        if key not in self._fetched:
            self._fetched[key] = self._wire.call(b"GET", key)
        value = self._fetched[key]
        if key not in self._applied:
            self._versions.setdefault(key, b"" if value is None else value[: _VERSION.size])
        return None if value is None else value[_VERSION.size :]

    def _write(self, key: bytes, payload: bytes) -> None:
        """Buffer `payload` under the version after the one read."""
        if key not in self._versions:
            self._read(key)  # a write computed from nothing read is still checked
        read = self._versions[key]
        version = _VERSION.unpack(read)[0] + 1 if read else 1
        self._writes[key] = _VERSION.pack(version) + payload


class RecordKeys:
    """The keys of one feature settings' records (also `redis_seeding`'s)."""

    __slots__ = ("_entities", "_transactions", "prefix")

    def __init__(self, identity: str) -> None:
        self.prefix = b"fraud:" + hashlib.sha256(identity.encode()).hexdigest()[:12].encode()
        self.prefix += b":"
        self._entities = {kind: self.prefix + kind.value.encode() + b":" for kind in EntityKind}
        self._transactions = self.prefix + TRANSACTION_KIND + b":"

    def entity(self, kind: EntityKind, key: str) -> bytes:
        return self._entities[kind] + _id(key)

    def transaction(self, transaction_id: str) -> bytes:
        return self._transactions + _id(transaction_id)

    def planned(self, plan: SessionPlan) -> list[bytes]:
        keys = [self.entity(kind, key) for kind, key in plan.entities]
        if plan.transaction_id is not None:
            keys.append(self.transaction(plan.transaction_id))
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


class _Wire:
    """The scoring path's one connection (a store is used by one thread, the event loop's):
    commands packed by hiredis and sent as they are, without redis-py's client layers
    (pool checkout, retries, encoders, instrumentation), which cost more CPU than the
    round trip. Any failure drops the connection, so a reply cut short by a timeout is
    never read as the next command's; the next call reconnects.

    A command sent `later` is not waited for: its reply is read before the next command's
    (replies come in order), by which time it has arrived. A scored transaction's answer
    goes so, after the one round trip that counted it; if it did not reach the server
    (connection lost, or an outcome changed the record first), a retry finds the
    transaction counted without an answer, as after a crash mid-way."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._connection: Any = pool.make_connection()  # redis-py leaves its methods untyped
        self._sha = {
            script: hashlib.sha1(script.encode()).hexdigest().encode() for script in _SCRIPTS
        }
        self._later: list[tuple[bytes | int, ...]] = []
        self.round_trips = 0
        """Replies waited for, since this connection was made: the cost that counts."""

    def call(self, *arguments: bytes | int) -> Any:
        self._read_later()
        connection = self._connection
        try:
            self._send(arguments)
            self.round_trips += 1
            return connection.read_response()
        except BaseException:
            self._drop()
            raise

    def later(self, *arguments: bytes | int) -> None:
        """Send a command whose reply is read with the next call's (see the class)."""
        try:
            self._send(arguments)
        except BaseException:
            self._drop()
            raise
        self._later.append(arguments)

    def evalsha(self, script: str, keys: list[bytes], arguments: list[bytes | int]) -> Any:
        """Run `script`, loading it first if the server does not hold it (restarted)."""
        command = (b"EVALSHA", self._sha[script], len(keys), *keys, *arguments)
        try:
            return self.call(*command)
        except redis.exceptions.NoScriptError:
            self.call(b"SCRIPT", b"LOAD", script.encode())
            return self.call(*command)

    def commit(self, keys: list[bytes], arguments: list[bytes | int]) -> bool:
        """Run `_COMMIT`: whether it wrote."""
        return bool(self.evalsha(_COMMIT, keys, arguments))

    def commit_later(self, keys: list[bytes], arguments: list[bytes | int]) -> None:
        """Send `_COMMIT` without waiting for its reply."""
        self.later(b"EVALSHA", self._sha[_COMMIT], len(keys), *keys, *arguments)

    def swipe(self, keys: list[bytes], arguments: list[bytes | int]) -> list[Any]:
        """Run `redis_swipes.SWIPE`: its reply."""
        reply: list[Any] = self.evalsha(SWIPE, keys, arguments)
        return reply

    def close(self) -> None:
        # Sent already: the server runs it whether its reply is read or not.
        with contextlib.suppress(redis.RedisError, OSError):
            self._read_later()
        self._connection.disconnect()

    def _send(self, arguments: tuple[bytes | int, ...]) -> None:
        packed = hiredis.pack_command(cast("Any", arguments))  # its stub takes a 1-tuple
        self._connection.send_packed_command([packed], check_health=False)

    def _read_later(self) -> None:
        """Read the replies of commands sent `later`; those the server refused for want of
        their script (restarted since) are sent again, with the script."""
        if not self._later:
            return
        sent, self._later = self._later, []
        refused = []
        for arguments in sent:
            try:
                self._connection.read_response()
            except redis.exceptions.NoScriptError:
                refused.append(arguments)
            except BaseException:
                self._drop()
                raise
        if refused:
            self.call(b"SCRIPT", b"LOAD", _COMMIT.encode())
            for arguments in refused:
                self.call(*arguments)

    def _drop(self) -> None:
        self._later.clear()
        self._connection.disconnect()


def _id(identifier: str) -> bytes:
    return record_key(identifier, _MAX_ID_BYTES)


def lifetime_milliseconds(seconds: float) -> int:
    """A record's lifetime in milliseconds (`horizon_seconds`); 0 (for ever) when
    unbounded."""
    return 0 if math.isinf(seconds) else max(1, round(seconds * 1000))
