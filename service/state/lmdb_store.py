"""The feature state in an LMDB file: survives restarts and crashes, and is shared by every
worker process on the machine.

One write transaction per scored transaction: LMDB lets one writer in at a time across
all processes, so `--workers N` computes exactly what one worker would, and a process
killed mid-write leaves the last committed state (copy-on-write pages; a dead writer's
lock is released by the kernel). Writes are not fsynced one by one: the OS holds them
after a process crash, and a background thread syncs every `sync_seconds` against a
machine crash.

With `writemap` (the default, on file systems that rewrite blocks in place), a transaction
writes its pages in the shared mapping of the file instead of copying each one to the file
by a system call at its commit. The map, and with it the file, grows ahead of the pages in
use, up to `max_bytes` (`lmdb_map`); a process finding that another grew it past its own
map (MapResizedError) maps as much. The file beyond the pages written is a hole, and a
write into a hole that the file system cannot fill (a full disk) is SIGBUS, which would
kill the server: so the file's blocks are reserved (`posix_fallocate`) ahead of the pages
in use, by more than any one write transaction can add, checked as each write transaction
begins, when this process holds LMDB's writer lock. A transaction for which no block can
be reserved is refused (NoRoomOnDisk: the fallback answer) and nothing is written
(`block_reserve`).

Eviction runs outside the scoring path's write lock. Every `_CHECK_EVERY` writes each kind
of record is counted; one above its bound gets a sweep, and every kind gets one every
`_IDLE_SWEEP_EVERY` writes: a read-only pass over the next `_SWEEP_CHUNK` records picks
those idle past the state horizon and, above the bound, the least recently active of the
chunk. The transactions, one more with each write, get a sweep of their idle ones of
`_TRANSACTION_SWEEP_CHUNK` every `_TRANSACTION_SWEEP_EVERY` writes: reading fewer than one
a write let those past the horizon pile up to the bound (the 15-minute soak), and small
sweeps often keep each one's pause on the answer it follows short. A short
write transaction deletes them after checking they did not change
meanwhile. Each process sweeps from its own place, so workers share the work.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import lmdb
import structlog

from service.config.settings import StateSettings
from service.features.memory_store import Evictions
from service.features.state import (
    NO_PLAN,
    EntityKind,
    SessionPlan,
    TileCount,
    TransactionRecord,
)
from service.state import lmdb_map
from service.state.block_reserve import BlockReserve, NoRoomOnDisk
from service.state.codec import (
    decode_entity,
    decode_transaction,
    encode_transaction,
    record_key,
    record_time,
)
from service.state.errors import StateMismatch, StateStoreError
from service.state.lmdb_map import at_least_the_file, directory_locked, rewrites_in_place

_CHECK_EVERY = 256
_IDLE_SWEEP_EVERY = 16_384
_TRANSACTION_SWEEP_EVERY = 32
_TRANSACTION_SWEEP_CHUNK = 128  # four a write
_SWEEP_CHUNK = 1_024
_log = structlog.get_logger(__name__)
_BULK_SWEEP_CHUNK = 16_384
_ROOM_CHUNK = 8_192
_ROOM_KEPT = 0.85  # of max_bytes the records may take before room is made
_DELETE_BATCH = 32
_MAX_KEY_BYTES = 480  # LMDB's limit is 511: longer ids are stored under their digest
_TRANSACTIONS = "x"
_DIRECTORY_MODE = 0o700
_IDENTITY_KEY = b"identity"
# What a transaction scored may add to the file at most: four records of at most 4 KB put,
# each splitting at most a B-tree's height of pages (about 26 pages).
_TRANSACTION_GROWTH = 128 << 10
# Reserved ahead of every write transaction: enough for 64 transactions (a stream's batch,
# a bulk's share) or a sweep's `_DELETE_BATCH` deletions.
_SESSION_GROWTH = 64 * _TRANSACTION_GROWTH


@dataclass(frozen=True)
class LmdbLimits:
    """Bounds of one store."""

    max_entities: int
    """Cards, terminals and merchants kept, each kind apart."""
    max_transactions: int
    """Transactions kept for outcomes and retries."""
    max_bytes: int
    """The file's size at most (LMDB's map size)."""


class LmdbStore:
    """A `StateStore` in the directory `path`, opened by each worker process on its own."""

    def __init__(
        self,
        path: Path,
        *,
        identity: str,
        horizon_seconds: float,
        limits: LmdbLimits,
        sync_seconds: float = StateSettings.model_fields["sync_seconds"].default,
        writemap: bool = True,
    ) -> None:
        """Open (or create) the store at `path` for feature settings named `identity`;
        StateMismatch when it holds state of other settings. `writemap` is used only on a
        file system that rewrites blocks in place (`lmdb_map.rewrites_in_place`)."""
        # The server's user alone: the state holds every card's, terminal's and merchant's
        # history. An existing directory keeps its mode (an operator's volume).
        path.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)
        self.path = path
        if writemap and not rewrites_in_place(path):
            _log.warning("state_writemap_off", path=str(path), reason="file system")
            writemap = False
        self._limits = limits
        self.writemap = writemap
        self._counted: dict[str, int] = {}
        try:
            self._env = self._open_env(path, limits.max_bytes, writemap)
        except lmdb.Error as error:
            raise StateStoreError(f"cannot open the feature state at {path}: {error}") from error
        self._blocks: BlockReserve | None = None
        try:
            if writemap:
                self._blocks = BlockReserve(self._env, path)
            self._dbs = self._open_databases(identity)
        except BaseException:
            self.close_files()
            raise
        self._horizon = horizon_seconds
        self._latest = -math.inf
        self._writes = 0
        self._bulk: lmdb.Transaction | None = None
        self._bulk_every = 1
        self._bulk_commit_every = 1
        self._bulk_sessions = 0
        self._sweep_from: dict[str, bytes] = {}
        self.evictions = Evictions()
        self._closed = threading.Event()
        self._syncer = threading.Thread(
            target=self._sync_every, args=(sync_seconds,), name="lmdb-sync", daemon=True
        )
        self._syncer.start()

    def session(self, plan: SessionPlan = NO_PLAN) -> _Session:
        """One write transaction: every other writer waits, so there is never a conflict.
        Within `bulk`, a share of the bulk's current transaction."""
        return self._session(_SESSION_GROWTH)

    def _session(self, growth: int) -> _Session:
        if self._bulk is not None:
            return _Session(self, self._bulk, self._dbs, bulk=True)
        return _Session(self, self._begin(growth), self._dbs, bulk=False)

    @staticmethod
    def _open_env(path: Path, max_bytes: int, writemap: bool) -> lmdb.Environment:
        def env(map_bytes: int) -> lmdb.Environment:
            return lmdb.open(
                str(path),
                map_size=map_bytes,
                max_dbs=6,
                sync=False,
                readahead=False,
                writemap=writemap,
                mode=_DIRECTORY_MODE,  # LMDB creates its files with it, less execute: 0600
            )

        if not writemap:  # the file grows with its pages whatever the map
            return env(max_bytes)
        with directory_locked(path):
            return env(at_least_the_file(path, min(lmdb_map.FIRST_MAP_BYTES, max_bytes)))

    def _begin(self, growth: int) -> lmdb.Transaction:
        """A write transaction that may add `growth` bytes to the file; NoRoomOnDisk when
        the file system has no blocks left for them (with `writemap`, which also grows the
        map first when they would not fit in it)."""
        while True:
            try:
                txn = self._env.begin(write=True, buffers=True)
            except lmdb.MapResizedError:  # another process's pages lie past this one's map
                if not self._remap(0):
                    raise
                continue
            blocks = self._blocks
            if blocks is None:
                return txn
            try:
                in_use = blocks.in_use()
                map_bytes = blocks.map_bytes
                if in_use + growth > map_bytes and map_bytes < self._limits.max_bytes:
                    txn.abort()  # LMDB remaps only with no transaction open in this process
                    self._remap(in_use + growth)
                    continue  # the pages in use counted again, under the writer lock
                blocks.ensure(in_use, growth)
            except BaseException:
                txn.abort()
                raise
            return txn

    def _remap(self, needed: int) -> bool:
        """Map `needed` bytes, grown ahead (`lmdb_map.grown`), or with 0 only what another
        process maps: never less than the file's size, which is the largest map of any
        process; whether the map changed.

        Only the scoring thread remaps, with no transaction of its own open: the values it
        reads are views of the map, which must not move under them. py-lmdb invalidates the
        transactions of other threads, and their calls racing the remap fail with
        `lmdb.Error` rather than touch the old map (`records`, `_sync_every`).
        """
        with directory_locked(self.path):
            current = int(self._env.info()["map_size"])
            wanted = current
            if needed:
                wanted = lmdb_map.grown(current, needed, self._limits.max_bytes)
            size = at_least_the_file(self.path, wanted)
            if size == current:
                return False
            self._env.set_mapsize(size)
        if self._blocks is not None:
            self._blocks.remapped()
        _log.info("state_map_resized", map_bytes=size)
        return True

    @contextmanager
    def batch_session(self, plan: SessionPlan, transactions: int) -> Iterator[_Session]:
        """One write transaction for `transactions` transactions counted in a row (a
        stream's batch): one commit, and eviction's bookkeeping as after that many."""
        with self._session(max(_SESSION_GROWTH, transactions * _TRANSACTION_GROWTH)) as session:
            yield session
        for _ in range(transactions - 1):
            self._committed(session)

    def _committed(self, session: _Session) -> None:
        """Bookkeeping after a session's own write transaction committed."""
        self._note(session)
        self._writes += 1
        try:
            if self._writes % _CHECK_EVERY == 0:
                if self._pages_used() > _ROOM_KEPT * self._limits.max_bytes:
                    self._make_room()
                self.sweep(idle_too=self._writes % _IDLE_SWEEP_EVERY == 0)
            if self._writes % _TRANSACTION_SWEEP_EVERY == 0:
                oldest = self._latest - self._horizon
                bound = self._limits.max_transactions
                self._sweep(_TRANSACTIONS, oldest, bound, True, _TRANSACTION_SWEEP_CHUNK)
        except lmdb.Error:  # the transaction is counted: its answer must not fail
            _log.exception("state_sweep_failed")

    def _shared(self, session: _Session) -> None:
        """Bookkeeping after a session of the bulk's transaction (see `bulk`)."""
        self._note(session)
        self._bulk_sessions += 1
        if self._bulk is not None and self._bulk_sessions % self._bulk_commit_every == 0:
            self._bulk.commit()
            if self._bulk_sessions % self._bulk_every < self._bulk_commit_every:
                # Between two bulk transactions (LMDB has one writer): a seeding replays
                # months, and what fell out of the horizon must not pile up meanwhile.
                self.sweep(chunk=_BULK_SWEEP_CHUNK)
            self._bulk = self._begin(_SESSION_GROWTH)

    @contextmanager
    def bulk(self, sessions_per_commit: int = 4_096) -> Iterator[None]:
        """Sessions within share one write transaction per `sessions_per_commit` (with
        `writemap`, per 64 at most: what the blocks reserved ahead hold): for a lone writer
        replaying history (`fraud-train state build`), which then pays one commit per batch
        instead of one per transaction. An exception aborts the sessions since the last
        commit; eviction sweeps (of `_BULK_SWEEP_CHUNK` records) run after each
        `sessions_per_commit` sessions."""
        self._bulk_every = self._bulk_commit_every = sessions_per_commit
        if self._blocks is not None:
            self._bulk_commit_every = min(
                sessions_per_commit, _SESSION_GROWTH // _TRANSACTION_GROWTH
            )
        self._bulk_sessions = 0
        self._bulk = self._begin(_SESSION_GROWTH)
        try:
            yield
        except BaseException:
            self._bulk.abort()
            raise
        else:
            self._bulk.commit()
        finally:
            self._bulk = None
        self.sweep()

    def records(self, kind: EntityKind | None = None) -> int:
        """Records held of `kind`, or transactions when None (all workers together); 0 once
        closed (a scrape may come after). Called from the metrics server's thread."""
        if self._closed.is_set():
            return 0
        name = _TRANSACTIONS if kind is None else kind
        try:
            with self._env.begin() as txn:
                self._counted[name] = int(txn.stat(self._dbs[name])["entries"])
        except lmdb.Error:
            # The scoring thread remapping meanwhile, or another process's pages past this
            # one's map until the scoring thread maps them (`_remap`): the last count.
            pass
        return self._counted.get(name, 0)

    def file_bytes(self) -> int:
        """Bytes of the store's data file that take blocks on disk (with `writemap`, its
        size is its map's: a hole past the blocks reserved ahead)."""
        status = (self.path / "data.mdb").stat()
        return min(status.st_size, status.st_blocks * 512)

    def sweep(self, *, idle_too: bool = True, chunk: int = _SWEEP_CHUNK) -> None:
        """One eviction step of `chunk` records over each kind of record above its bound,
        or over every kind with `idle_too` (see the module's docstring)."""
        oldest = self._latest - self._horizon
        for name, bound in (
            *((kind, self._limits.max_entities) for kind in EntityKind),
            (_TRANSACTIONS, self._limits.max_transactions),
        ):
            self._sweep(name, oldest, bound, idle_too, chunk)

    def _pages_used(self) -> int:
        """Bytes in the pages the records take (free pages left out)."""
        with self._read() as txn:
            stats = [txn.stat(db) for db in self._dbs.values()]
        pages = sum(st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"] for st in stats)
        return pages * int(stats[0]["psize"])

    def _make_room(self) -> None:
        """The records fill `_ROOM_KEPT` of `max_bytes`, or the file is full (the bounds do
        not fit in it): drop the least recently active of the next `_ROOM_CHUNK` records
        of each kind, whatever the bounds, counted as capacity evictions (idle ones as
        idle). The headroom matters: in a file with no free page, even a delete fails.
        Terminals and merchants go first: their records span whole pages, so dropping them
        frees pages at once. If even deleting fails, `max_bytes` must grow (logged)."""
        kinds = (EntityKind.TERMINAL, EntityKind.MERCHANT, EntityKind.CARD, _TRANSACTIONS)
        try:
            for kind in kinds:
                self._sweep(kind, self._latest - self._horizon, 0, True, _ROOM_CHUNK)
        except lmdb.Error:
            _log.exception("state_full", max_bytes=self._limits.max_bytes)

    def _note(self, session: _Session) -> None:
        if session.latest > self._latest:
            self._latest = session.latest

    def close(self) -> None:
        self._closed.set()
        self._syncer.join()
        self._env.sync(True)
        self.close_files()

    def close_files(self) -> None:
        self._env.close()
        if self._blocks is not None:
            self._blocks.close()

    def _sweep(self, name: str, oldest: float, bound: int, idle_too: bool, size: int) -> None:
        db = self._dbs[name]
        with self._read(db) as txn:
            excess = int(txn.stat(db)["entries"]) - bound
            if excess <= 0 and not idle_too:
                return
            cursor = txn.cursor()
            start = self._sweep_from.get(name, b"")
            if not cursor.set_range(start) and not cursor.first():
                return
            chunk, self._sweep_from[name] = _chunk(cursor, size, oldest, every=excess > 0)
        idle = [(time, key) for time, key in chunk if time < oldest]
        over = sorted(entry for entry in chunk if entry[0] >= oldest)[: max(0, excess - len(idle))]
        if not idle and not over:
            return
        # Small write transactions: each holds the writers' lock briefly, and needs few new
        # pages, so deleting works even in a full file (freed pages serve the next batch).
        for victims, reason in ((idle, "idle"), (over, "capacity")):
            for first in range(0, len(victims), _DELETE_BATCH):
                batch = victims[first : first + _DELETE_BATCH]
                with self._begin(_SESSION_GROWTH) as txn:
                    deleted = _delete_unchanged(txn, batch, db)
                if reason == "idle":
                    self.evictions.idle += deleted
                else:
                    self.evictions.capacity += deleted

    def _read(self, db: lmdb._Database | None = None) -> lmdb.Transaction:
        """A read transaction (of the scoring thread), its values views of the map."""
        while True:
            try:
                return self._env.begin(db=db, buffers=True)
            except lmdb.MapResizedError:  # another process grew the map past this one's
                if not self._remap(0):
                    raise

    def _open_databases(self, identity: str) -> dict[str, lmdb._Database]:
        """The store's databases, created with its identity in a new store; StateMismatch
        when it holds state of other settings. A store that exists opens even with no
        blocks left on its disk (writes are refused until there are)."""
        try:
            txn, write = self._begin(_SESSION_GROWTH), True
        except NoRoomOnDisk:  # nothing to write in a store that exists: read it
            txn, write = self._read(), False
        with txn:
            found = txn.get(_IDENTITY_KEY)
            new = found is None
            if new and not write:
                raise StateStoreError(f"no room on disk to create the feature state at {self.path}")
            dbs = {
                name: self._env.open_db(str(name).encode(), txn=txn, create=write)
                for name in (*EntityKind, _TRANSACTIONS)
            }
            held = identity if found is None else bytes(found).decode()
            if new:
                txn.put(_IDENTITY_KEY, identity.encode())
        if held != identity:
            raise StateMismatch(
                f"{self.path} holds feature state of settings {held}, not {identity}: "
                "point the state elsewhere or rebuild it (fraud-train state build)"
            )
        return dbs

    def _sync_every(self, seconds: float) -> None:
        while not self._closed.wait(seconds):
            try:
                self._env.sync(True)
            except lmdb.Error:  # refused while the scoring thread remaps: next time
                _log.info("state_sync_skipped", exc_info=True)


class _Session:
    """One write transaction, or a share of the bulk's: a `StateSession`, and the context
    that commits it (a class rather than a generator: this is the scoring path). Its reads
    are views of the map (`buffers`), decoded at once, before any write moves the pages
    they view; its writes pass records as they are (an `array('d')` is its codec bytes),
    with no copy made for them."""

    __slots__ = ("_bulk", "_dbs", "_store", "_txn", "latest")

    def __init__(
        self,
        store: LmdbStore,
        txn: lmdb.Transaction,
        dbs: dict[str, lmdb._Database],
        *,
        bulk: bool,
    ) -> None:
        self._store = store
        self._txn = txn
        self._dbs = dbs
        self._bulk = bulk
        self.latest = -math.inf

    def __enter__(self) -> _Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bulk:  # an exception propagates to `bulk`, which aborts the batch
            if exc_type is None:
                self._store._shared(self)
            return
        if exc_type is not None:
            self._txn.abort()
            if issubclass(exc_type, lmdb.MapFullError):
                self._store._make_room()  # this one fails (the fallback); the next ones fit
            return
        try:
            self._txn.commit()
        except lmdb.MapFullError:
            self._store._make_room()
            raise
        self._store._committed(self)

    def entity(self, kind: EntityKind, key: str) -> array[float] | None:
        value = self._txn.get(_key(key), db=self._dbs[kind])
        return None if value is None else decode_entity(value)

    def put_entity(self, kind: EntityKind, key: str, record: array[float]) -> None:
        if record[0] > self.latest:
            self.latest = record[0]
        self._txn.put(_key(key), record, db=self._dbs[kind])

    def put_counted(
        self, kind: EntityKind, key: str, record: array[float], count: TileCount
    ) -> None:
        self.put_entity(kind, key, record)  # one writer at a time: the record is current

    def transaction(self, transaction_id: str) -> TransactionRecord | None:
        value = self._txn.get(_key(transaction_id), db=self._dbs[_TRANSACTIONS])
        return None if value is None else decode_transaction(value)

    def put_transaction(self, record: TransactionRecord) -> None:
        key = _key(record.transaction.transaction_id)
        self._txn.put(key, encode_transaction(record), db=self._dbs[_TRANSACTIONS])


def _key(identifier: str) -> bytes:
    return record_key(identifier, _MAX_KEY_BYTES)


def _chunk(
    cursor: lmdb.Cursor, count: int, oldest: float, *, every: bool
) -> tuple[list[tuple[float, bytes]], bytes]:
    """(time, key) of the records idle before `oldest`, or of all of them with `every`,
    among up to `count` records from the cursor's position on; and the key to start from
    next time (empty: the start again).

    The transactions' sweep reads four records a scored transaction, nearly all of them
    live: their keys are copied only when picked."""
    picked: list[tuple[float, bytes]] = []
    for read, value in enumerate(cursor.iternext(keys=False, values=True), start=1):
        time = record_time(value)
        if every or time < oldest:
            picked.append((time, bytes(cursor.key())))
        if read == count:
            return picked, bytes(cursor.key()) if cursor.next() else b""
    return picked, b""


def _delete_unchanged(
    txn: lmdb.Transaction, victims: list[tuple[float, bytes]], db: lmdb._Database
) -> int:
    """Delete the records of `db` that are still as old as when they were chosen; how
    many."""
    deleted = 0
    for time, key in victims:
        value = txn.get(key, db=db)
        if value is not None and record_time(value) <= time:
            deleted += txn.delete(key, db=db)
    return deleted
