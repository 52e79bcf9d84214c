"""ScoreBatch end to end over loopback (real server, the trained model, the client helper):
answers in order as Score one by one, retries counted once, all-or-nothing validation, the
size limit, conflicts by position and the budget's fallback."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import grpc
from prometheus_client import REGISTRY

from service.config.settings import BudgetSettings, ConnectionSettings
from service.grpc_api._proto.fraud.v1 import scoring_pb2
from service.grpc_api.client import FraudScoringClient
from tests.service.grpc_api.test_server import (
    TIMEOUT,
    _failure,
    _request,
    _sample,
    _stub,
    _wait_until,
    champion_store,
    make_settings,
    serve,
)
from tests.service.loopback import LoopbackServer

__all__ = ["champion_store", "serve"]  # the fixtures, shared
Status = grpc.StatusCode
Requests = list[scoring_pb2.ScoreRequest]
DAY_AGO = datetime.now(UTC) - timedelta(days=1)


def _swipes(*numbers: int, amount_minor: int | None = None) -> Requests:
    """Swipes "tx-n" of one card at one terminal, a minute apart, with growing amounts
    (unless given): each one's features depend on those before it."""
    return [
        _request(
            f"tx-{n}",
            amount_minor=1_000 * n if amount_minor is None else amount_minor,
            when=DAY_AGO + timedelta(minutes=n),
        )
        for n in numbers
    ]


def _decisions() -> float:
    """Decisions counted so far, every decision and source (a repeat is not one)."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "fraud_decisions"
        for sample in metric.samples
        if sample.name == "fraud_decisions_total"
    )


def _batch(
    target: str, requests: Sequence[scoring_pb2.ScoreRequest]
) -> list[scoring_pb2.ScoreResponse]:
    """The batch's answers, through the client helper."""
    with FraudScoringClient(target, timeout=TIMEOUT) as client:
        return client.score_batch(requests)


def test_a_batch_answers_in_order_as_score_one_by_one(
    serve: Callable[..., LoopbackServer],
) -> None:
    """Six swipes of one card with a repeat among them: the batch's answers are, in order,
    exactly those Score gives one by one on a server of its own."""
    requests = _swipes(1, 2, 3, 4, 5)
    requests.insert(3, requests[1])
    alone = _stub(serve().target)
    one_by_one = [alone.Score(request, timeout=TIMEOUT) for request in requests]
    batch_size_calls = _sample("fraud_batch_size_count")
    answers = _batch(serve().target, requests)
    assert answers == one_by_one
    assert [a.transaction_id for a in answers] == ["tx-1", "tx-2", "tx-3", "tx-2", "tx-4", "tx-5"]
    assert {a.decision_source for a in answers} == {scoring_pb2.DECISION_SOURCE_MODEL}
    assert _sample("fraud_batch_size_count") == batch_size_calls + 1


def test_a_batch_sent_again_gets_the_same_answers_counted_once(
    serve: Callable[..., LoopbackServer],
) -> None:
    server = serve()
    requests = _swipes(1, 2, 3)
    before = _decisions()
    first = _batch(server.target, requests)
    assert _decisions() == before + 3
    assert _batch(server.target, requests) == first
    assert _decisions() == before + 3


def test_an_invalid_transaction_refuses_the_whole_batch_and_counts_none(
    serve: Callable[..., LoopbackServer],
) -> None:
    """#2 invalid: INVALID_ARGUMENT naming it and the field, no answer, and the two valid
    ones before it are still new when sent alone (each a decision counted, not a repeat)."""
    server = serve()
    valid = _swipes(1, 2)
    invalid = _swipes(3, amount_minor=-5)
    refused_before = _sample("fraud_rpc_requests_total", rpc="ScoreBatch", code="INVALID_ARGUMENT")
    before = _decisions()
    assert _failure(lambda: _batch(server.target, [*valid, *invalid])) == (
        Status.INVALID_ARGUMENT,
        "transaction #2: transaction.amount_minor: must be 0 or more",
    )
    assert _decisions() == before
    assert len(_batch(server.target, valid)) == 2
    assert _decisions() == before + 2
    _wait_until(
        lambda: (
            _sample("fraud_rpc_requests_total", rpc="ScoreBatch", code="INVALID_ARGUMENT")
            == refused_before + 1
        )
    )


def test_a_batch_above_the_limit_is_refused_naming_it_and_an_empty_one_answered_empty(
    serve: Callable[..., LoopbackServer],
) -> None:
    server = serve(make_settings(connections=ConnectionSettings(batch_max_transactions=2)))
    before = _decisions()
    assert _failure(lambda: _batch(server.target, _swipes(1, 2, 3))) == (
        Status.INVALID_ARGUMENT,
        "transactions: at most 2 in one batch (connections.batch_max_transactions)",
    )
    assert _decisions() == before
    assert len(_batch(server.target, _swipes(1, 2))) == 2
    assert _batch(server.target, []) == []


def test_a_conflicting_repeat_is_already_exists_by_position_after_those_before_it(
    serve: Callable[..., LoopbackServer],
) -> None:
    """tx-1 scored, then a batch [tx-2, tx-1 with another amount, tx-3]: ALREADY_EXISTS
    naming #1 and the field; tx-2 was counted (found again as a repeat), tx-3 was not."""
    server = serve()
    _batch(server.target, _swipes(1))
    conflicting = _swipes(1)[0]
    conflicting.transaction.amount_minor = 99_999
    before = _decisions()
    assert _failure(lambda: _batch(server.target, [*_swipes(2), conflicting, *_swipes(3)])) == (
        Status.ALREADY_EXISTS,
        "transaction #1: transaction.amount_minor: differs from the transaction already "
        "scored under this transaction_id; a new transaction needs a new transaction_id",
    )
    assert _decisions() == before + 1
    _batch(server.target, _swipes(2, 3))
    assert _decisions() == before + 2


def test_a_spent_budget_gets_every_transaction_the_fallback_uncounted(
    serve: Callable[..., LoopbackServer],
) -> None:
    server = serve(make_settings(budget=BudgetSettings(server_budget_ms=0.001)))
    fallbacks_before = _sample("fraud_fallback_total", reason="deadline")
    answers = _batch(server.target, _swipes(1, 2, 3))
    assert [(a.decision_source, a.fallback_reason) for a in answers] == [
        (scoring_pb2.DECISION_SOURCE_FALLBACK, "deadline")
    ] * 3
    assert _sample("fraud_fallback_total", reason="deadline") == fallbacks_before + 3
