"""The feature engine: one transaction in, its feature vector out, entity state updated.

`FEATURES` is the model's input contract, in order. Changing a feature's meaning or order
means bumping `FEATURE_ENGINE_VERSION`, so that a server refuses models built for another.

The vector has two halves with disjoint state: what the transaction and its card say
(`CardFeatures`), then what its terminal and merchant risk say (`RiskFeatures`, the only
half that reads outcomes). The server runs both in turn, in one store session; training
may replay them in parallel processes, since neither reads the other's records.

A stream's batch (`admit_many`) is counted in one session where the store offers one for
several transactions (`BatchStateStore`: memory, LMDB), so that one model call decides
them all and one commit keeps them with their answers; a store that counts each swipe
where its records live (Redis) gets a session per transaction, as `admit` does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

from service.core.domain import Admitted, EarlierAttempt, OutcomeFate, ScoreResult, Transaction
from service.core.label_conflicts import DEFAULT_RANK
from service.features.card_features import CardFeatures, card_feature_specs
from service.features.card_history import card_swipe
from service.features.config import FeatureConfig
from service.features.memory_store import MemoryStore
from service.features.risk_features import RiskFeatures, risk_feature_specs
from service.features.risk_history import RiskRing
from service.features.state import (
    NO_PLAN,
    EntityKind,
    SessionConflict,
    SessionPlan,
    StateSession,
    StateStore,
    Swipe,
    SwipeLayout,
    TransactionRecord,
)

FEATURE_ENGINE_VERSION = 2
# How a shared store lays its records out, apart from what they mean: a store of another
# layout is refused and rebuilt (`fraud-train state build`), the model is still good.
# 2: a transaction's answer is kept in its record, not beside it.
STATE_LAYOUT_VERSION = 2
# Sessions run again after a conflict with another writer before giving up: a card or a
# terminal scored by several replicas at the same instant. Each retry waits a random part of
# a window that doubles (50 µs, 100 µs, ...): two replicas retrying in lockstep on a busy
# merchant would otherwise collide again and again. At most 6.35 ms of waiting in all (3.2
# expected), on the event loop's thread: only a shared store across the network conflicts.
_ATTEMPTS = 8
_T = TypeVar("_T")
_FIRST_BACKOFF_SECONDS = 50e-6


# A batch's counted transactions, each as (its position in the batch, its features), in
# order; the answers the decision gives them, in the same order (None: none could be given).
BatchDecision = Callable[[Sequence[tuple[int, list[float]]]], Sequence[ScoreResult | None]]


@runtime_checkable
class BatchStateStore(StateStore, Protocol):
    """A store whose one session may count several transactions in a row (as LMDB's write
    transaction can), bookkept as that many sessions."""

    def batch_session(
        self, plan: SessionPlan, transactions: int
    ) -> AbstractContextManager[StateSession]: ...


class StateContention(RuntimeError):
    """The same records kept changing under this transaction's session."""


class FeatureSpec(NamedTuple):
    name: str
    description: str


CARD_HALF: tuple[FeatureSpec, ...] = tuple(
    FeatureSpec(name, description) for name, description in card_feature_specs()
)
RISK_HALF: tuple[FeatureSpec, ...] = tuple(
    FeatureSpec(name, description) for name, description in risk_feature_specs()
)
FEATURES: tuple[FeatureSpec, ...] = CARD_HALF + RISK_HALF
FEATURE_NAMES: tuple[str, ...] = tuple(spec.name for spec in FEATURES)


def state_identity(config: FeatureConfig) -> str:
    """Names the records this engine writes with `config`: a store holding others is not
    read (its records have another layout or another meaning)."""
    return (
        f"feature engine {FEATURE_ENGINE_VERSION}, state layout {STATE_LAYOUT_VERSION}, "
        f"settings {config.fingerprint}"
    )


class FeatureEngine:
    """Feature state of every card, terminal and merchant, in `store` (by default this
    process's memory, bounded only by the state horizon).

    The engine holds no state of its own: several engines (workers, replicas) on one shared
    store compute what one would.
    """

    def __init__(self, config: FeatureConfig, store: StateStore | None = None) -> None:
        self.config = config
        self.store: StateStore = store or MemoryStore(horizon_seconds=config.state_horizon_seconds)
        self._cards = CardFeatures(config)
        self._risk = RiskFeatures(config)
        self._horizon = config.state_horizon_seconds
        # A store that counts a swipe where its records live, in the round trip that reads
        # them (Redis), is told what the swipe writes; others are spared working it out.
        self._swipes: SwipeLayout | None = None
        if getattr(self.store, "applies_swipes", False):
            self._swipes = RiskRing(config.label_delay_seconds).swipe_layout()
        self._batches: BatchStateStore | None = None
        if self._swipes is None and isinstance(self.store, BatchStateStore):
            self._batches = self.store

    def observe(self, tx: Transaction) -> list[float]:
        """Count `tx` and return its feature vector, in `FEATURES` order.

        ValueError if its transaction_id was counted already (the server uses `admit`).
        """
        admitted = self.admit(tx)
        if isinstance(admitted, EarlierAttempt):
            raise ValueError(f"transaction_id {tx.transaction_id!r} was counted already")
        return list(admitted.features)

    def admit(
        self,
        tx: Transaction,
        decide: Callable[[list[float]], ScoreResult | None] | None = None,
        *,
        previous_card_id: str | None = None,
    ) -> Admitted | EarlierAttempt:
        """Count `tx`, answer it with `decide(features)` and keep the answer with it, all in
        one session; or, when its transaction_id was counted already, return what was kept
        of that attempt, counting nothing.

        One session rather than two: a retry can never find the transaction counted but
        its answer missing (short of a crash mid-way in memory), and a shared store pays
        one commit. `decide` may run more than once, on a conflict with another writer; it
        returns None when no answer can be given (the transaction is counted regardless).
        `previous_card_id` is the card's token under a token key being rotated out: when
        `tx.card_id` has no live history, the one kept under it is carried over.
        """
        entities: tuple[tuple[EntityKind, str], ...] = (
            (EntityKind.CARD, tx.card_id),
            (EntityKind.TERMINAL, tx.terminal_id),
        )
        if tx.merchant_id:
            entities += ((EntityKind.MERCHANT, tx.merchant_id),)
        if previous_card_id is not None:  # fetched with the rest; read only if needed
            entities += ((EntityKind.CARD, previous_card_id),)
        swipe = None
        if self._swipes is not None:
            card = card_swipe(tx, self.config.small_amount)
            swipe = Swipe(tx, card, self._swipes, previous_card_id)
        plan = SessionPlan(entities, tx.transaction_id, swipe)
        return self._in_session(
            plan, lambda session: self._admit(session, tx, decide, previous_card_id)
        )

    def admit_many(
        self,
        transactions: Sequence[Transaction],
        decide: BatchDecision,
        *,
        previous_card_ids: Sequence[str | None],
        go_on: Callable[[int, EarlierAttempt], bool],
    ) -> list[Admitted | EarlierAttempt]:
        """What `admit` makes of each of `transactions` in turn, each seeing the ones before
        it counted, with one `decide` for all of those counted (their positions and
        features, in order).

        A repeat of a transaction counted earlier in the batch is an `EarlierAttempt` of it
        with no answer yet: the caller answers it as that one. `go_on(position, attempt)` is
        asked of each repeat; on False the batch ends there, what follows is not counted and
        the list ends with that attempt. `previous_card_ids` is `admit`'s, per transaction.
        """
        if self._batches is None or len(transactions) == 1:
            return self._admit_each(transactions, decide, previous_card_ids, go_on)
        return self._in_session(
            NO_PLAN,
            lambda session: self._admit_batch(
                session, transactions, decide, previous_card_ids, go_on
            ),
            batch=len(transactions),
        )

    def record_answer(self, transaction_id: str, answer: ScoreResult) -> None:
        """Keep `answer` for retries of `transaction_id`, counted by `admit` but not answered
        there; nothing if it is not kept, or already answered."""

        def keep(session: StateSession) -> None:
            record = session.transaction(transaction_id)
            if record is not None and record.answer is None:
                record.answer = answer
                session.put_transaction(record)

        self._in_session(SessionPlan(transaction_id=transaction_id), keep)

    def report_outcome(
        self,
        transaction_id: str,
        is_fraud: bool,
        reported_at: float,
        rank: int = DEFAULT_RANK,
    ) -> OutcomeFate:
        """Count `transaction_id` as fraud (or genuine) from event time `reported_at` on, as
        reported by a caller of `rank`, unless an earlier report by a higher-ranked caller
        holds its label (`service.core.label_conflicts`).

        NOT_HELD (falsy) when the transaction is unknown, TOO_LATE when it is too old to
        affect any feature, OUTRANKED when the earlier report's label stands.
        """
        return self._in_session(
            SessionPlan(transaction_id=transaction_id),
            lambda session: self._risk.report_outcome(
                session, transaction_id, is_fraud, reported_at, rank
            ),
        )

    def _admit(
        self,
        session: StateSession,
        tx: Transaction,
        decide: Callable[[list[float]], ScoreResult | None] | None,
        previous_card_id: str | None,
    ) -> Admitted | EarlierAttempt:
        earlier = session.transaction(tx.transaction_id)
        # One idle past the horizon is gone on every path, whenever a store actually drops
        # it: the id is new again.
        if earlier is not None and earlier.transaction.timestamp >= tx.timestamp - self._horizon:
            return EarlierAttempt(earlier.transaction, earlier.answer)
        out = self._cards.observe(session, tx, previous_card_id)
        record = self._risk.observe(session, tx, out)
        if decide is not None:
            record.answer = decide(out)
        session.put_transaction(record)
        return Admitted(out, record.answer)

    def _admit_each(
        self,
        transactions: Sequence[Transaction],
        decide: BatchDecision,
        previous_card_ids: Sequence[str | None],
        go_on: Callable[[int, EarlierAttempt], bool],
    ) -> list[Admitted | EarlierAttempt]:
        """`admit_many` as a session per transaction, each deciding its own."""
        admitted: list[Admitted | EarlierAttempt] = []
        for position, tx in enumerate(transactions):

            def decide_one(features: list[float], at: int = position) -> ScoreResult | None:
                return decide([(at, features)])[0]

            one = self.admit(tx, decide_one, previous_card_id=previous_card_ids[position])
            admitted.append(one)
            if isinstance(one, EarlierAttempt) and not go_on(position, one):
                break
        return admitted

    def _admit_batch(
        self,
        session: StateSession,
        transactions: Sequence[Transaction],
        decide: BatchDecision,
        previous_card_ids: Sequence[str | None],
        go_on: Callable[[int, EarlierAttempt], bool],
    ) -> list[Admitted | EarlierAttempt]:
        """`_admit` of each transaction in one session; the records are kept once decided,
        so that each is written once, with its answer."""
        admitted: list[Admitted | EarlierAttempt] = []
        counted: list[tuple[int, list[float]]] = []
        records: list[TransactionRecord] = []
        counted_here: dict[str, TransactionRecord] = {}
        for position, tx in enumerate(transactions):
            transaction_id = tx.transaction_id
            earlier = counted_here.get(transaction_id) or session.transaction(transaction_id)
            if (
                earlier is not None
                and earlier.transaction.timestamp >= tx.timestamp - self._horizon
            ):
                repeat = EarlierAttempt(earlier.transaction, earlier.answer)
                admitted.append(repeat)
                if not go_on(position, repeat):
                    break
                continue
            out = self._cards.observe(session, tx, previous_card_ids[position])
            record = self._risk.observe(session, tx, out)
            counted_here[transaction_id] = record
            counted.append((position, out))
            records.append(record)
            admitted.append(Admitted(out, None))
        answers = decide(counted) if counted else ()
        for (position, features), record, answer in zip(counted, records, answers, strict=True):
            record.answer = answer
            session.put_transaction(record)
            admitted[position] = Admitted(features, answer)
        return admitted

    def _in_session(
        self, plan: SessionPlan, work: Callable[[StateSession], _T], *, batch: int = 0
    ) -> _T:
        """`work` in a session of `plan` (with `batch`, one batch session for that many
        transactions), run again while another writer got in first."""
        for attempt in range(_ATTEMPTS):
            try:
                with (
                    self._batches.batch_session(plan, batch)
                    if batch and self._batches is not None
                    else self.store.session(plan)
                ) as session:
                    done = work(session)
            except SessionConflict:  # another replica wrote one of these first: read again
                _back_off(attempt)
                continue
            return done
        raise StateContention(f"{_ATTEMPTS} attempts met other writers")


def _back_off(attempt: int) -> None:
    if attempt < _ATTEMPTS - 1:  # no wait after the last attempt: it is given up
        time.sleep(random.random() * _FIRST_BACKOFF_SECONDS * (1 << attempt))
