"""What the feature engine keeps, and the store it keeps it in.

Four kinds of record, each under its own id:

- a card's, a terminal's and a merchant's history: fixed-size `array('d')` records
  (`card_history`, `risk_history`);
- a transaction's `TransactionRecord`: the transaction as validated (card number already
  tokenised), where its outcome must go and the answer it got, so that an outcome reaches
  the right terminal, and a retry the same answer, whichever worker or replica receives it.

A `StateStore` hands out sessions; everything one transaction reads and writes happens in
one session, atomically with respect to every other worker sharing the store. Records idle
longer than the state horizon (`FeatureConfig.state_horizon_seconds`) are read as new, on
every path, so when a store actually drops them never changes a feature.
"""

from __future__ import annotations

from array import array
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

from service.core.domain import ScoreResult, Transaction


class EntityKind(StrEnum):
    """The entities with a history; the value prefixes their keys in a shared store."""

    CARD = "c"
    TERMINAL = "t"
    MERCHANT = "m"


@dataclass(slots=True)
class TransactionRecord:
    """A scored transaction, for as long as an outcome or a retry may still arrive."""

    transaction: Transaction
    terminal_tile: int
    merchant_tile: int
    """-1 without a merchant."""
    is_fraud: bool = False
    """The label counted in the terminal's and merchant's tiles: the deciding report's
    (`service.core.label_conflicts`)."""
    answer: ScoreResult | None = None
    """None until answered, and for good when no answer could be given."""
    label_rank: int = 0
    """The rank of the caller whose report `is_fraud` is (0 until reported)."""


class TileCount(NamedTuple):
    """One transaction counted in a terminal's or merchant's record (`tiles.apply_count`):
    the time it was counted at, and for each ring of (transactions, frauds) tiles its base
    index, its number of tiles, the index of its newest tile's number, and the tile."""

    time: float
    rings: tuple[tuple[int, int, int, int], ...]

    @property
    def hour(self) -> int:
        """The tile of the last ring (the hours): where the transaction's outcome goes."""
        return self.rings[-1][3]


class SwipeLayout(NamedTuple):
    """How a swipe changes the terminal's and merchant's records, for a store that applies
    it itself: the count's rings (day base, day tiles, day head index, then the same of
    the hours) and a new record's bytes before and after its tiles."""

    rings: tuple[int, int, int, int, int, int]
    new_head: bytes
    new_tail: bytes


class Swipe(NamedTuple):
    """A transaction to count, for a store that counts it where the records live, in the
    round trip that reads them (the Redis store, in Lua): what `card_history.card_swipe`
    says of the card, and the risk records' layout. A store may ignore it."""

    transaction: Transaction
    card: tuple[float, ...]
    layout: SwipeLayout
    previous_card_id: str | None


class SessionPlan(NamedTuple):
    """What a session is about to read, so that a store across the network fetches it in
    one round trip (reads outside the plan cost one each); with `swipe`, the session counts
    that transaction, which such a store may do in the same round trip."""

    entities: tuple[tuple[EntityKind, str], ...] = ()
    transaction_id: str | None = None
    swipe: Swipe | None = None


NO_PLAN = SessionPlan()


class SessionConflict(Exception):
    """Another writer changed a record this session read, so none of its writes was made:
    run the session again (stores that lock, as LMDB does, never raise it)."""


class StateSession(Protocol):
    """Reads and writes of one transaction (or outcome), atomic as a whole."""

    def entity(self, kind: EntityKind, key: str) -> array[float] | None:
        """The record of `key`, or None if the store holds none. Changes to it are kept
        only by `put_entity`."""
        ...

    def put_entity(self, kind: EntityKind, key: str, record: array[float]) -> None: ...

    def put_counted(
        self, kind: EntityKind, key: str, record: array[float], count: TileCount
    ) -> None:
        """Keep `record`, the record of `key` read in this session with `count` applied (and
        what that made due settled). A store shared by concurrent writers may instead apply
        `count` to the record it holds (counts commute) and keep the rest as it is: what
        was settled here is settled again by the next reader."""
        ...

    def transaction(self, transaction_id: str) -> TransactionRecord | None: ...

    def put_transaction(self, record: TransactionRecord) -> None:
        """Keep `record`, its answer included (and with it: an id reused past the horizon
        never finds the old transaction's answer)."""
        ...


class StateStore(Protocol):
    """Where the feature state lives: in this process, in a file shared by the workers of
    one machine, or in a server shared by replicas."""

    def session(self, plan: SessionPlan = NO_PLAN) -> AbstractContextManager[StateSession]:
        """A session; leaving it without an exception commits its writes, or raises
        SessionConflict having made none."""
        ...

    def close(self) -> None: ...
