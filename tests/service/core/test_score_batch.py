"""Tests for `Scorer.score_batch`: a stream's transactions counted in one feature-state
session and scored by one model call answer exactly as `Scorer.score` one by one, on a
trained model and real feature state (memory and LMDB)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from service.config.settings import StateBackend, StateSettings
from service.core.card_tokens import CardTokenizer
from service.core.domain import (
    NANOS_PER_SECOND,
    DecisionSource,
    FallbackReason,
    RawOutcome,
    RawTransaction,
    ScoreResult,
    Transaction,
)
from service.core.errors import ConflictingRepeat, InvalidRequest
from service.core.scoring import BatchAnswers, FallbackPolicy, Scorer
from service.core.validation import ScoringLimits
from service.features import FeatureEngine, MemoryStore
from service.features.state import NO_PLAN, EntityKind, SessionPlan, StateSession
from service.model.loading import LoadedModel
from service.model.store import ModelStore
from service.state.lmdb_store import LmdbStore
from service.state.opening import open_state
from tests.conftest import TrainedModel
from tests.factories import raw_transaction
from training.data.loading import load_transactions
from training.data.replay import transactions

TOKENIZER = CardTokenizer(b"test key")
DAYS = 3
DAY_NS = 86_400 * NANOS_PER_SECOND
# Batch sizes taken in turn: single transactions between batches, as a stream has them.
BATCH_SIZES = (1, 2, 7, 32, 3, 16)
# What a listener heard: the transaction, its features, the answer, the deciding model.
Heard = tuple[Transaction, tuple[float, ...] | None, ScoreResult, str | None]


@dataclasses.dataclass(frozen=True)
class OneModel:
    current: LoadedModel | None


class Recorder:
    """An answer listener that keeps what it hears, in order."""

    def __init__(self) -> None:
        self.heard: list[Heard] = []

    def on_answer(
        self,
        tx: Transaction,
        features: Sequence[float] | None,
        result: ScoreResult,
        model: LoadedModel | None,
    ) -> None:
        kept = None if features is None else tuple(features)
        self.heard.append((tx, kept, result, None if model is None else model.version))


@pytest.fixture(scope="module")
def model(trained_model: TrainedModel) -> LoadedModel:
    store = ModelStore(trained_model.registry)
    store.load_champion()
    assert store.current is not None
    return store.current


@pytest.fixture(scope="module")
def history(trained_model: TrainedModel, model: LoadedModel) -> list[tuple[RawTransaction, bool]]:
    """The first days of the training history as requests, with their fraud labels."""
    frame = load_transactions(trained_model.history).frame
    first_ns = int(frame["timestamp_ns"].iloc[0])
    frame = frame[frame["timestamp_ns"] < first_ns + DAYS * DAY_NS]
    rows = zip(
        transactions(frame), frame["timestamp_ns"].tolist(), frame["is_fraud"].tolist(), strict=True
    )
    return [(_raw_from(tx, timestamp_ns), bool(fraud)) for tx, timestamp_ns, fraud in rows]


def _raw_from(tx: Transaction, timestamp_ns: int) -> RawTransaction:
    return RawTransaction(
        tx.transaction_id, tx.card_id, tx.terminal_id, tx.merchant_id, round(tx.amount * 100),
        tx.currency, timestamp_ns, max(tx.mcc, 0), int(tx.entry_mode), tx.card_present,
        tx.country,
    )  # fmt: skip


def _time(raw: RawTransaction) -> int:
    assert raw.timestamp_ns is not None
    return raw.timestamp_ns


def _scorer(engine: FeatureEngine, model: LoadedModel | None) -> tuple[Scorer[Any], Recorder]:
    recorder = Recorder()
    scorer: Scorer[Any] = Scorer(
        engine,
        OneModel(model),
        tokenizer=TOKENIZER,
        limits=ScoringLimits(),
        fallback=FallbackPolicy(),
        answer_listeners=[recorder],
    )
    return scorer, recorder


@contextmanager
def _engines(
    backend: StateBackend, model: LoadedModel, tmp_path: Path
) -> Iterator[list[FeatureEngine]]:
    """Two engines on fresh state of `backend`: one for each way of scoring."""
    config = model.manifest.feature_config
    stores = [
        open_state(StateSettings(backend=backend, path=tmp_path / name), config)
        for name in ("alone", "batched")
    ]
    try:
        yield [FeatureEngine(config, store) for store in stores]
    finally:
        for store in stores:
            store.close()


def _batches(history: list[tuple[RawTransaction, bool]]) -> Iterator[list[RawTransaction]]:
    """The history cut into BATCH_SIZES in turn, with repeats: each batch of 7 ends with
    its first transaction again, each of 16 starts with the previous batch's last."""
    sizes = itertools.cycle(BATCH_SIZES)
    raws = [raw for raw, _fraud in history]
    start, previous = 0, None
    while start < len(raws):
        size = next(sizes)
        batch = raws[start : start + size]
        start += size
        if size == 7:
            batch.append(batch[0])
        if size == 16 and previous is not None:
            batch.insert(0, previous)
        previous = batch[-1]
        yield batch


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
def test_a_batch_answers_as_one_by_one_with_one_model_call(
    backend: StateBackend,
    model: LoadedModel,
    history: list[tuple[RawTransaction, bool]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Days of history in batches of 1 to 33, repeats within and across batches, outcomes
    reported between them: every answer and everything the listeners hear (features
    included) equal `score` one by one's, exactly, and each batch of more than one
    transaction counted is scored by one model call."""
    labels = {raw.transaction_id: fraud for raw, fraud in history}
    delay_ns = round(model.manifest.feature_config.label_delay_seconds * NANOS_PER_SECOND)
    calls: list[int] = []
    score_batch = model.scorer.score_batch

    def counted_call(matrix: Any) -> npt.NDArray[np.float64]:
        calls.append(len(matrix))
        return score_batch(matrix)

    monkeypatch.setattr(model.scorer, "score_batch", counted_call)
    with _engines(backend, model, tmp_path) as (alone_engine, batched_engine):
        alone, heard_alone = _scorer(alone_engine, model)
        batched, heard_batched = _scorer(batched_engine, model)
        due: list[tuple[int, RawOutcome]] = []  # (when it is known, the outcome)
        expected_calls = 0
        answered = 0
        for batch in _batches(history):
            for known in [known for known in due if known[0] <= _time(batch[0])]:
                alone.report_outcome(known[1])
                batched.report_outcome(known[1])
                due.remove(known)
            heard_before = len(heard_alone.heard)
            one_by_one = [alone.score(raw) for raw in batch]
            together = batched.score_batch([(raw, None) for raw in batch])
            assert together == BatchAnswers(one_by_one)
            answered += len(one_by_one)
            expected_calls += len(heard_alone.heard) - heard_before > 1  # counted, not repeats
            for raw in batch:
                if labels.pop(raw.transaction_id, False):
                    known_at = _time(raw) + delay_ns
                    due.append((known_at, RawOutcome(raw.transaction_id, True, known_at)))
    assert answered > 1_000
    assert heard_batched.heard == heard_alone.heard
    assert {result.source for _tx, _f, result, _m in heard_alone.heard} == {DecisionSource.MODEL}
    assert len(calls) == expected_calls
    assert max(calls) > 16


def test_a_conflicting_repeat_ends_the_batch_and_nothing_after_it_is_counted(
    model: LoadedModel,
) -> None:
    """The transactions before a repeat with other content are answered, the repeat's
    error is returned, and the one after it is not counted."""
    engine = FeatureEngine(model.manifest.feature_config, MemoryStore())
    scorer, _heard = _scorer(engine, model)
    conflicting = raw_transaction(1, amount_minor=9_999)
    batch = [raw_transaction(1), raw_transaction(2), conflicting, raw_transaction(3)]
    answers = scorer.score_batch([(raw, None) for raw in batch])
    assert [answer.transaction_id for answer in answers.answers] == ["tx-1", "tx-2"]
    assert isinstance(answers.error, ConflictingRepeat)
    assert str(answers.error).startswith("transaction.amount_minor: ")
    held = engine.store
    assert isinstance(held, MemoryStore)
    assert held.transaction("tx-2") is not None
    assert held.transaction("tx-3") is None


def test_an_invalid_transaction_ends_the_batch_after_the_answers_before_it(
    model: LoadedModel,
) -> None:
    engine = FeatureEngine(model.manifest.feature_config, MemoryStore())
    scorer, _heard = _scorer(engine, model)
    batch = [raw_transaction(1), raw_transaction(2, amount_minor=-5), raw_transaction(3)]
    answers = scorer.score_batch([(raw, None) for raw in batch])
    assert [answer.transaction_id for answer in answers.answers] == ["tx-1"]
    assert isinstance(answers.error, InvalidRequest)
    held = engine.store
    assert isinstance(held, MemoryStore)
    assert held.records() == 1


def test_a_late_transaction_in_a_batch_gets_its_own_fallback(model: LoadedModel) -> None:
    """A deadline passed is that transaction's "deadline" fallback, uncounted; the others
    are the model's, as one by one."""
    config = model.manifest.feature_config
    alone, _ = _scorer(FeatureEngine(config, MemoryStore()), model)
    batched, _ = _scorer(FeatureEngine(config, MemoryStore()), model)
    requests = [(raw_transaction(n), None if n != 2 else 0.0) for n in range(1, 5)]
    together = batched.score_batch(requests)
    assert together == BatchAnswers([alone.score(raw, deadline=d) for raw, d in requests])
    assert [answer.fallback_reason for answer in together.answers] == [
        None, FallbackReason.DEADLINE, None, None,
    ]  # fmt: skip


class _Poisoned:
    """An LMDB store whose sessions fail on writing one terminal's record."""

    def __init__(self, store: LmdbStore, terminal: str) -> None:
        self._store = store
        self._terminal = terminal

    def session(self, plan: SessionPlan = NO_PLAN) -> Any:
        return self._poisoned(self._store.session(plan))

    def batch_session(self, plan: SessionPlan, transactions: int) -> Any:
        return self._poisoned(self._store.batch_session(plan, transactions))

    def close(self) -> None:
        self._store.close()

    @contextmanager
    def _poisoned(self, opened: Any) -> Iterator[Any]:
        with opened as session:
            yield _Refusing(session, self._terminal)


class _Refusing:
    """A session that refuses to write `terminal`'s record, as a full disk would."""

    def __init__(self, session: StateSession, terminal: str) -> None:
        self._session = session
        self._terminal = terminal

    def put_entity(self, kind: EntityKind, key: str, record: Any) -> None:
        self._refuse(kind, key)
        self._session.put_entity(kind, key, record)

    def put_counted(self, kind: EntityKind, key: str, record: Any, count: Any) -> None:
        self._refuse(kind, key)
        self._session.put_counted(kind, key, record, count)

    def _refuse(self, kind: EntityKind, key: str) -> None:
        if kind is EntityKind.TERMINAL and key == self._terminal:
            raise OSError("disk full")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def test_a_state_failure_is_the_failing_transactions_own_fallback(
    model: LoadedModel, tmp_path: Path
) -> None:
    """A store failing on one transaction's write fails the batch's session (nothing
    kept); each transaction then goes alone: that one gets the "state_unavailable"
    fallback, the others the model's answers, as one by one."""
    config = model.manifest.feature_config
    answers = []
    for name in ("alone", "batched"):
        store = open_state(StateSettings(backend="lmdb", path=tmp_path / name), config)
        assert isinstance(store, LmdbStore)
        scorer, _ = _scorer(FeatureEngine(config, _Poisoned(store, "term-poison")), model)
        batch = [raw_transaction(1), raw_transaction(2, terminal_id="term-poison")]
        batch += [raw_transaction(3)]
        if name == "alone":
            answers.append(BatchAnswers([scorer.score(raw) for raw in batch]))
        else:
            answers.append(scorer.score_batch([(raw, None) for raw in batch]))
        store.close()
    assert answers[0] == answers[1]
    assert [answer.fallback_reason for answer in answers[1].answers] == [
        None, FallbackReason.STATE_UNAVAILABLE, None,
    ]  # fmt: skip
