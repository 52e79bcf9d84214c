"""A stream of transactions for the shared stores' tests, and the checks every shared store
must pass across a reopening (a restarted process or replica): the vectors memory gives,
and a retry answered as the first attempt was."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TypeVar
from unittest.mock import ANY

from service.core.domain import (
    Decision,
    DecisionSource,
    EarlierAttempt,
    Reason,
    ScoreResult,
    Transaction,
)
from service.features import FeatureConfig, FeatureEngine, StateStore
from tests.service.features.engine_io import DAY, DELAY, T0, tx

_Store = TypeVar("_Store", bound=StateStore)


def stream(count: int) -> list[Transaction]:
    """Transactions of a few cards, terminals and merchants, minutes to days apart."""
    gaps = itertools.cycle([60.0, 600.0, 5.0, 3_600.0, 0.0, 20_000.0, DAY / 3])
    now = T0
    transactions = []
    for number in range(count):
        now += next(gaps)
        transactions.append(
            tx(
                number,
                now,
                card=f"card{number % 13}",
                terminal=f"term{number % 5}",
                merchant_id=f"m{number % 3}" if number % 4 else "",
                amount=1.0 + (number * 37 % 500),
            )
        )
    return transactions


def assert_as_in_memory_across_a_reopening(
    config: FeatureConfig, open_store: Callable[[], StateStore]
) -> None:
    """3,000 transactions, an outcome for every seventh, give the vectors memory gives,
    though the store is closed and opened anew halfway."""
    transactions = stream(3_000)
    memory = FeatureEngine(config)
    store = open_store()
    shared = FeatureEngine(config, store)
    for number, current in enumerate(transactions):
        if number == len(transactions) // 2:
            store.close()
            store = open_store()
            shared = FeatureEngine(config, store)
        assert shared.observe(current) == memory.observe(current), number
        if number % 7 == 0:
            reported = current.timestamp + DELAY
            assert shared.report_outcome(current.transaction_id, True, reported)
            assert memory.report_outcome(current.transaction_id, True, reported)
    store.close()


def assert_a_retry_after_a_reopening_gets_the_first_answer(
    config: FeatureConfig, open_store: Callable[[], _Store]
) -> _Store:
    """A transaction answered in one store object is, retried in a new one on the same
    state, the first attempt with its answer, counted nothing. Returns the new store, open,
    for the caller's own checks of what it holds."""
    answer = ScoreResult(
        "tx1", 0.75, Decision.DECLINE, (Reason("R01", "amount", 1.5),), "v1",
        DecisionSource.MODEL, None,
    )  # fmt: skip
    store = open_store()
    first = tx(1, T0, amount=12.5, merchant_id="m", card_present=True, country="FR")
    assert FeatureEngine(config, store).admit(first, lambda features: answer) == (ANY, answer)
    store.close()
    store = open_store()
    assert FeatureEngine(config, store).admit(first) == EarlierAttempt(first, answer)
    return store
