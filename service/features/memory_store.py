"""The feature state in this process's memory: for training's replay, evaluation and tests.

Each kind of record is kept in least-recently-written order. A record idle past the state
horizon is dropped (counted as idle); beyond `max_records` of one kind, the least recently
written is dropped (counted as capacity). Nothing survives the process.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from service.features.state import (
    NO_PLAN,
    EntityKind,
    SessionPlan,
    StateSession,
    TileCount,
    TransactionRecord,
)

_R = TypeVar("_R")
# Records idle past the horizon are looked for at every this many writes of a kind: they
# are read as new anyway, dropping them is only about memory.
_IDLE_CHECK_EVERY = 64


@dataclass
class Evictions:
    """Records dropped so far: idle past the horizon, or over the bound."""

    idle: int = 0
    capacity: int = 0


class MemoryStore:
    """A `StateStore` and its only session: not shared, not thread-safe, never persisted."""

    def __init__(
        self, *, horizon_seconds: float = math.inf, max_records: int | None = None
    ) -> None:
        self._horizon = horizon_seconds
        self._max_records = max_records
        self._entities: dict[EntityKind, OrderedDict[str, array[float]]] = {
            kind: OrderedDict() for kind in EntityKind
        }
        self._transactions: OrderedDict[str, TransactionRecord] = OrderedDict()
        self._latest = -math.inf
        self._puts = 0
        self.evictions = Evictions()

    def session(self, plan: SessionPlan = NO_PLAN) -> MemoryStore:
        """This store itself: its writes are its reads, nothing to commit."""
        return self

    def batch_session(self, plan: SessionPlan, transactions: int) -> MemoryStore:
        """This store itself, as for one transaction."""
        return self

    def __enter__(self) -> StateSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Nothing to commit or roll back."""

    def close(self) -> None:
        """Nothing to release."""

    def records(self, kind: EntityKind | None = None) -> int:
        """Records held of `kind`, or transactions when None."""
        return len(self._transactions if kind is None else self._entities[kind])

    def held(self, kind: EntityKind) -> Iterable[tuple[str, array[float]]]:
        """Every record of `kind` held, by key (to copy a replayed state elsewhere)."""
        return self._entities[kind].items()

    def held_transactions(self) -> Iterable[TransactionRecord]:
        """Every transaction's record held."""
        return self._transactions.values()

    def entity(self, kind: EntityKind, key: str) -> array[float] | None:
        return self._entities[kind].get(key)

    def put_entity(self, kind: EntityKind, key: str, record: array[float]) -> None:
        records = self._entities[kind]
        records[key] = record
        records.move_to_end(key)
        self._evict(records, record[0])

    def put_counted(
        self, kind: EntityKind, key: str, record: array[float], count: TileCount
    ) -> None:
        self.put_entity(kind, key, record)

    def transaction(self, transaction_id: str) -> TransactionRecord | None:
        return self._transactions.get(transaction_id)

    def put_transaction(self, record: TransactionRecord) -> None:
        records = self._transactions
        records[record.transaction.transaction_id] = record
        records.move_to_end(record.transaction.transaction_id)
        self._evict(records, record.transaction.timestamp)

    def _evict(self, records: OrderedDict[str, _R], time: float) -> None:
        if self._max_records is not None and len(records) > self._max_records:
            records.popitem(last=False)
            self.evictions.capacity += 1
        if time > self._latest:
            self._latest = time
        self._puts += 1
        if self._puts % _IDLE_CHECK_EVERY == 0:
            oldest = self._latest - self._horizon
            for entities in self._entities.values():
                self._evict_idle(entities, oldest, _entity_time)
            self._evict_idle(self._transactions, oldest, _transaction_time)

    def _evict_idle(
        self, records: OrderedDict[str, _R], oldest: float, time_of: Callable[[_R], float]
    ) -> None:
        while records and time_of(next(iter(records.values()))) < oldest:
            records.popitem(last=False)
            self.evictions.idle += 1


def _entity_time(record: array[float]) -> float:
    return record[0]  # both layouts start with the entity's latest event time


def _transaction_time(record: TransactionRecord) -> float:
    return record.transaction.timestamp
