"""The gRPC server end to end over loopback: real server, real channels, the trained model.

Each server runs in an event loop on its own thread (`LoopbackServer`), so the tests call it
with the same blocking clients backends use.
"""

from __future__ import annotations

import csv
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from benchmarks.load.history_requests import request_from_row
from service.app import build_scorer, watch_models
from service.config.settings import (
    BudgetSettings,
    ConnectionSettings,
    FallbackSettings,
    LoggingSettings,
    ServerSettings,
    ServeSettings,
    TlsSettings,
)
from service.core.domain import EntryMode, ModelSummary, RawOutcome, RawTransaction, ScoreResult
from service.core.ports import ModelSource
from service.core.scoring import BatchAnswers, score_one_by_one
from service.features import FeatureConfig, FeatureEngine
from service.features.engine import FEATURE_NAMES
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.grpc_api.client import FraudScoringClient, build_outcome_request, build_score_request
from service.grpc_api.interceptors import OVERLOADED_DETAILS
from service.grpc_api.server import (
    SCORING_SERVICE_NAME,
    BindError,
    set_serving,
    shut_down,
)
from service.grpc_api.servicer import SAFETY_MARGIN_SECONDS, ScoringCore, answer_by
from service.model.loading import LoadedModel
from service.model.store import ModelStore
from tests.conftest import TrainedModel
from tests.service.grpc_api.held_calls import UnsentRequest
from tests.service.loopback import LoopbackServer

T = TypeVar("T")
TIMEOUT = 10.0  # generous: the machine is shared; no test relies on it running out
PAN = "4111 1111 1111 1111"  # Luhn-valid test card number
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
Status = grpc.StatusCode


@pytest.fixture(scope="module")
def champion_store(trained_model: TrainedModel, champion_config: FeatureConfig) -> ModelStore:
    """The trained champion, loaded once for the module's servers (they run one at a time)."""
    store = ModelStore(trained_model.registry, feature_config=champion_config)
    store.load_champion()
    return store


@pytest.fixture
def unloaded_store(trained_model: TrainedModel, champion_config: FeatureConfig) -> ModelStore:
    """A store for the champion that has not loaded it yet."""
    return ModelStore(trained_model.registry, feature_config=champion_config)


@pytest.fixture
def serve(
    champion_config: FeatureConfig, champion_store: ModelStore
) -> Iterator[Callable[..., LoopbackServer]]:
    """Start servers with fresh feature state; all are stopped after the test."""
    servers: list[LoopbackServer] = []

    def start(
        serve_settings: ServeSettings | None = None,
        *,
        store: ModelSource[LoadedModel] = champion_store,
        scorer: ScoringCore | None = None,
    ) -> LoopbackServer:
        resolved = serve_settings or make_settings()
        engine = FeatureEngine(champion_config)
        core = scorer or build_scorer(resolved, engine, store)
        server = LoopbackServer(resolved, core)
        servers.append(server)
        if store.current is not None:
            server.run(set_serving(server.health))
        return server

    yield start
    for server in servers:
        server.stop()


def make_settings(**changes: Any) -> ServeSettings:
    """Settings for a loopback server on a free port; `changes` replace whole groups."""
    fields: dict[str, Any] = {
        "server": ServerSettings(host="127.0.0.1", port=0),
        "logging": LoggingSettings(sample_rate=1.0),  # every log line's code runs
    } | changes
    return ServeSettings(**fields)


def _stub(target: str) -> scoring_pb2_grpc.FraudScoringStub:
    return scoring_pb2_grpc.FraudScoringStub(grpc.insecure_channel(target))


def _health_stub(target: str) -> Any:
    """A health client (its type stubs lack the methods)."""
    return health_pb2_grpc.HealthStub(grpc.insecure_channel(target))


def _health(target: str, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    status: int = _health_stub(target).Check(request, timeout=TIMEOUT).status
    return status


def _request(
    transaction_id: str = "tx-1",
    card_id: str = "card-1",
    terminal_id: str = "term-1",
    amount_minor: int = 1250,
    when: datetime | None = None,
    **optional: Any,
) -> scoring_pb2.ScoreRequest:
    """A valid request; the event time defaults to a day ago."""
    moment = when or datetime.now(UTC) - timedelta(days=1)
    return build_score_request(
        transaction_id, card_id, terminal_id, amount_minor, "EUR", moment, **optional
    )


def _failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status code and details `call` fails with."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error: Any = raised.value  # an RpcError that is also a grpc.Call
    return error.code(), error.details() or ""


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# --- Scoring -------------------------------------------------------------------------------


def test_a_scored_transaction_carries_every_response_field(
    serve: Callable[..., LoopbackServer], trained_model: TrainedModel
) -> None:
    """Score answers with the id, a probability, a decision, the model version and source."""
    server = serve()
    approved_before = _sample("fraud_decisions_total", decision="approve", source="model")
    with FraudScoringClient(server.target, timeout=TIMEOUT) as client:
        response = client.score(
            "tx-42",
            "card-7",
            "term-3",
            1250,
            "EUR",
            datetime.now(UTC) - timedelta(hours=1),
            merchant_id="merchant-9",
            mcc=5411,
            entry_mode=scoring_pb2.ENTRY_MODE_CHIP,
            card_present=True,
            country="FR",
        )
    assert response.transaction_id == "tx-42"
    assert 0.0 <= response.score <= 1.0
    assert response.decision == scoring_pb2.DECISION_APPROVE
    assert list(response.reasons) == []
    assert response.model_version == trained_model.version
    assert response.decision_source == scoring_pb2.DECISION_SOURCE_MODEL
    assert response.fallback_reason == ""
    assert _sample("fraud_decisions_total", decision="approve", source="model") == (
        approved_before + 1
    )


def test_the_stream_answers_each_transaction_in_order_with_reasons_for_declines(
    serve: Callable[..., LoopbackServer], trained_model: TrainedModel
) -> None:
    """ScoreStream answers a day of history in order; declines carry reasons, approvals none."""
    server = serve()
    requests = list(_history_requests(trained_model.history, days=1))
    responses = list(_stub(server.target).ScoreStream(iter(requests), timeout=60))
    assert [r.transaction_id for r in responses] == [r.transaction.transaction_id for r in requests]
    declined = [r for r in responses if r.decision == scoring_pb2.DECISION_DECLINE]
    approved = [r for r in responses if r.decision == scoring_pb2.DECISION_APPROVE]
    assert declined, "a day of simulated history holds frauds the model declines"
    assert all(r.reasons and r.reasons[0].code for r in declined)
    assert all(r.reasons[0].feature in FEATURE_NAMES for r in declined)
    assert not any(r.reasons for r in approved)
    assert {r.decision_source for r in responses} == {scoring_pb2.DECISION_SOURCE_MODEL}


def test_an_invalid_transaction_ends_the_stream_naming_it_and_the_field(
    serve: Callable[..., LoopbackServer],
) -> None:
    """The stream answers the good transactions, then fails on the bad one, named."""
    server = serve()
    requests = [_request("tx-a"), _request("tx-b", amount_minor=-5), _request("tx-c")]
    responses = _stub(server.target).ScoreStream(iter(requests), timeout=TIMEOUT)
    assert next(responses).transaction_id == "tx-a"
    assert _failure(lambda: next(responses)) == (
        Status.INVALID_ARGUMENT,
        "transaction #1: transaction.amount_minor: must be 0 or more",
    )


def test_a_reported_fraud_raises_later_scores_at_its_terminal(
    serve: Callable[..., LoopbackServer], trained_model: TrainedModel
) -> None:
    """A fraud reported at its label delay changes the next score at its terminal only."""
    server = serve()
    stub = _stub(server.target)
    delay = timedelta(days=7)  # the trained model's label delay (FeatureConfig default)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
    later_scores = {}
    for terminal, reported in (("term-fraud", True), ("term-quiet", None)):
        card = f"card-at-{terminal}"
        for minute in range(3):
            tx_id, when = f"{terminal}-{minute}", start + timedelta(minutes=minute)
            stub.Score(_request(tx_id, card, terminal, when=when), timeout=TIMEOUT)
            if reported is not None:
                outcome = build_outcome_request(tx_id, reported, when + delay)
                stub.ReportOutcome(outcome, timeout=TIMEOUT)
        later = _request(
            f"{terminal}-later", card, terminal, when=start + delay + timedelta(hours=1)
        )
        later_scores[terminal] = stub.Score(later, timeout=TIMEOUT).score
    assert later_scores["term-fraud"] > later_scores["term-quiet"]


def test_an_outcome_for_an_unknown_transaction_is_not_found(
    serve: Callable[..., LoopbackServer],
) -> None:
    """ReportOutcome for a transaction the server never saw is NOT_FOUND."""
    stub = _stub(serve().target)
    request = build_outcome_request("never-seen", True, datetime.now(UTC))
    code, _details = _failure(lambda: stub.ReportOutcome(request, timeout=TIMEOUT))
    assert code == Status.NOT_FOUND


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (scoring_pb2.OutcomeRequest(transaction_id="tx-1", is_fraud=True), "reported_at"),
        (build_outcome_request("", True, datetime.now(UTC)), "transaction_id"),
    ],
    ids=["no-reported-at", "no-transaction-id"],
)
def test_a_bad_outcome_is_invalid_argument_naming_the_field(
    serve: Callable[..., LoopbackServer], request_: scoring_pb2.OutcomeRequest, field: str
) -> None:
    """ReportOutcome without a required field is INVALID_ARGUMENT naming it."""
    stub = _stub(serve().target)
    code, details = _failure(lambda: stub.ReportOutcome(request_, timeout=TIMEOUT))
    assert code == Status.INVALID_ARGUMENT
    assert details.startswith(f"{field}: ")


def test_model_info_describes_the_champion(
    serve: Callable[..., LoopbackServer], trained_model: TrainedModel
) -> None:
    """GetModelInfo gives the champion's version, features, thresholds and libraries."""
    with FraudScoringClient(serve().target, timeout=TIMEOUT) as client:
        info = client.model_info()
    assert info.version == trained_model.version
    assert tuple(feature.name for feature in info.features) == FEATURE_NAMES
    assert 0.0 < info.review_threshold <= info.decline_threshold <= 1.0
    assert info.test_metrics
    assert "lightgbm" in info.training_libraries


# --- Invalid requests --------------------------------------------------------------------


def _set(**fields: Any) -> Callable[[scoring_pb2.Transaction], None]:
    def apply(tx: scoring_pb2.Transaction) -> None:
        for name, value in fields.items():
            setattr(tx, name, value)

    return apply


def _timestamp(moment: datetime) -> Callable[[scoring_pb2.Transaction], None]:
    return lambda tx: tx.timestamp.FromDatetime(moment)


INVALID_TRANSACTIONS = {
    "no-transaction": (lambda tx: tx.Clear(), "transaction.transaction_id"),
    "no-transaction-id": (_set(transaction_id=""), "transaction.transaction_id"),
    "no-card-id": (_set(card_id=""), "transaction.card_id"),
    "no-terminal-id": (_set(terminal_id=""), "transaction.terminal_id"),
    "negative-amount": (_set(amount_minor=-1), "transaction.amount_minor"),
    "absurd-amount": (_set(amount_minor=10**11 + 1), "transaction.amount_minor"),
    "unknown-currency": (_set(currency="ABC"), "transaction.currency"),
    "no-currency": (_set(currency=""), "transaction.currency"),
    "no-timestamp": (lambda tx: tx.ClearField("timestamp"), "transaction.timestamp"),
    "card-number-in-terminal-id": (_set(terminal_id=PAN), "transaction.terminal_id"),
    "track-2-in-transaction-id": (
        _set(transaction_id=";4111111111111111=2512101?"),
        "transaction.transaction_id",
    ),
    "before-2000": (_timestamp(datetime(1999, 12, 31, tzinfo=UTC)), "transaction.timestamp"),
    "long-transaction-id": (_set(transaction_id="t" * 129), "transaction.transaction_id"),
    "long-card-id": (_set(card_id="c" * 129), "transaction.card_id"),
    "long-terminal-id": (_set(terminal_id="t" * 10_000), "transaction.terminal_id"),
    "long-merchant-id": (_set(merchant_id="m" * 129), "transaction.merchant_id"),
    "unknown-entry-mode": (_set(entry_mode=42), "transaction.entry_mode"),
    "mcc-above-9999": (_set(mcc=10_000), "transaction.mcc"),
    "lowercase-country": (_set(country="fr"), "transaction.country"),
}


@pytest.mark.parametrize(
    ("change", "field"), INVALID_TRANSACTIONS.values(), ids=INVALID_TRANSACTIONS.keys()
)
def test_a_bad_transaction_is_invalid_argument_naming_the_field(
    serve: Callable[..., LoopbackServer],
    change: Callable[[scoring_pb2.Transaction], None],
    field: str,
) -> None:
    """Score refuses each kind of bad input with INVALID_ARGUMENT "field: reason"."""
    stub = _stub(serve().target)
    request = _request(card_id=PAN)
    change(request.transaction)
    refused_before = _sample("fraud_rpc_requests_total", rpc="Score", code="INVALID_ARGUMENT")
    code, details = _failure(lambda: stub.Score(request, timeout=TIMEOUT))
    assert code == Status.INVALID_ARGUMENT
    assert details.startswith(f"{field}: ")
    assert "4111" not in details
    # Counted as the call ends, which is just after the client has its answer.
    _wait_until(
        lambda: (
            _sample("fraud_rpc_requests_total", rpc="Score", code="INVALID_ARGUMENT")
            == refused_before + 1
        )
    )


def test_a_known_id_with_other_content_is_already_exists_and_counted(
    serve: Callable[..., LoopbackServer],
) -> None:
    """A 100,000,000.00 EUR swipe on another card under the id of an approved 12.50 EUR one
    gets ALREADY_EXISTS naming the field, not the cached APPROVE; the same request again
    still gets its answer."""
    stub = _stub(serve().target)
    moment = datetime.now(UTC) - timedelta(days=1)
    first = stub.Score(_request(when=moment), timeout=TIMEOUT)
    conflicts_before = _sample("fraud_rpc_requests_total", rpc="Score", code="ALREADY_EXISTS")
    other = _request(card_id="card-2", amount_minor=10_000_000_000, when=moment)
    code, details = _failure(lambda: stub.Score(other, timeout=TIMEOUT))
    assert code == Status.ALREADY_EXISTS
    assert details.startswith("transaction.card_id: ")
    assert "card-2" not in details
    assert stub.Score(_request(when=moment), timeout=TIMEOUT) == first
    _wait_until(
        lambda: (
            _sample("fraud_rpc_requests_total", rpc="Score", code="ALREADY_EXISTS")
            == conflicts_before + 1
        )
    )


def test_a_message_above_the_size_limit_is_refused(
    serve: Callable[..., LoopbackServer],
) -> None:
    """A request larger than max_message_bytes never reaches the scorer."""
    stub = _stub(serve().target)
    request = _request(merchant_id="m" * (64 * 1024))
    code, _details = _failure(lambda: stub.Score(request, timeout=TIMEOUT))
    assert code == Status.RESOURCE_EXHAUSTED


def test_bytes_that_are_no_message_of_the_method_are_invalid_argument_and_not_logged_as_errors(
    serve: Callable[..., LoopbackServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Found by `fraud-bench fuzz`: a request whose bytes do not parse (a corrupt wire
    format) was UNKNOWN, with grpc logging a traceback at level error for each: unary and
    streamed alike, it is the caller's error, INVALID_ARGUMENT."""
    channel = grpc.insecure_channel(serve().target)
    corrupt = b"\x0a\x80\x01xx"  # a length-delimited field longer than the message
    for method in ("Score", "ReportOutcome", "GetModelInfo"):
        call: Any = channel.unary_unary(f"/fraud.v1.FraudScoring/{method}")  # raw bytes
        code, details = _failure(partial(call, corrupt, timeout=TIMEOUT))
        assert (code, details) == (Status.INVALID_ARGUMENT, "the request is not a valid message")
    valid = _request("tx-before-corrupt").SerializeToString()
    stream: Any = channel.stream_stream("/fraud.v1.FraudScoring/ScoreStream")
    answers: list[bytes] = []
    with pytest.raises(grpc.RpcError) as raised:
        answers.extend(stream(iter([valid, corrupt]), timeout=TIMEOUT))
    error: Any = raised.value
    assert len(answers) == 1
    assert error.code() == Status.INVALID_ARGUMENT
    assert error.details() == "transaction #1: the request is not a valid message"
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


def test_bytes_that_are_no_health_request_are_invalid_argument_and_not_logged_as_errors(
    serve: Callable[..., LoopbackServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Found by `fraud-bench fuzz`: grpc's own health service answered bytes that do not
    parse with UNKNOWN and a traceback logged at level error for each, open to anyone as
    health is. Check and Watch answer INVALID_ARGUMENT now; a valid check still answers."""
    channel = grpc.insecure_channel(serve().target)
    corrupt = b"\x0a\x80\x01xx"  # a length-delimited field longer than the message
    check: Any = channel.unary_unary("/grpc.health.v1.Health/Check")
    watch: Any = channel.unary_stream("/grpc.health.v1.Health/Watch")
    assert _failure(partial(check, corrupt, timeout=TIMEOUT)) == (
        Status.INVALID_ARGUMENT,
        "the request is not a valid message",
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(watch(corrupt, timeout=TIMEOUT))
    refused: Any = raised.value
    assert refused.code() == Status.INVALID_ARGUMENT
    healthy = health_pb2.HealthCheckResponse.FromString(
        check(
            health_pb2.HealthCheckRequest(service="liveness").SerializeToString(), timeout=TIMEOUT
        )
    )
    assert healthy.status == health_pb2.HealthCheckResponse.SERVING
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


def test_clients_are_asked_to_reconnect_at_the_connection_age_and_no_call_fails(
    serve: Callable[..., LoopbackServer],
) -> None:
    """After `max_connection_age_seconds` the server sends the client away (GOAWAY), so a
    client re-resolves its target and finds replicas added since; its calls go on over a
    new connection, none failed."""
    server = serve(
        make_settings(server=ServerSettings(
            host="127.0.0.1", port=0, max_connection_age_seconds=0.2, grace_seconds=0.1
        ))
    )  # fmt: skip
    channel = grpc.insecure_channel(server.target)
    states: list[grpc.ChannelConnectivity] = []
    channel.subscribe(states.append)
    stub: Any = scoring_pb2_grpc.FraudScoringStub(channel)
    started = time.monotonic()
    while time.monotonic() - started < 2.0:
        stub.GetModelInfo(scoring_pb2.GetModelInfoRequest(), timeout=TIMEOUT)
        time.sleep(0.02)
    channel.close()
    connections = states.count(grpc.ChannelConnectivity.READY)
    assert connections >= 3, states


# --- Errors from the core ------------------------------------------------------------------


class _BrokenCore:
    """A scoring core whose every call fails unexpectedly, with request data in the text."""

    def score(self, raw: RawTransaction, *, deadline: float | None) -> ScoreResult:
        raise RuntimeError(f"cannot score card {raw.card_id}")

    def score_batch(
        self,
        requests: Sequence[tuple[RawTransaction, float | None]],
        *,
        validate_all_first: bool = False,
    ) -> BatchAnswers:
        return score_one_by_one(self.score, requests)

    def report_outcome(self, raw: RawOutcome) -> None:
        raise KeyError(raw.transaction_id)

    def model_summary(self) -> ModelSummary:
        raise ZeroDivisionError("no model")


@pytest.mark.parametrize(
    "call",
    [
        lambda stub: stub.Score(_request(card_id=PAN), timeout=TIMEOUT),
        lambda stub: next(stub.ScoreStream(iter([_request(card_id=PAN)]), timeout=TIMEOUT)),
        lambda stub: stub.ReportOutcome(
            build_outcome_request("tx-1", True, datetime.now(UTC)), timeout=TIMEOUT
        ),
        lambda stub: stub.GetModelInfo(scoring_pb2.GetModelInfoRequest(), timeout=TIMEOUT),
    ],
    ids=["Score", "ScoreStream", "ReportOutcome", "GetModelInfo"],
)
def test_an_unexpected_error_is_internal_without_its_text(
    serve: Callable[..., LoopbackServer], call: Callable[[Any], object]
) -> None:
    """Every RPC turns an unexpected exception into INTERNAL "internal error"."""
    stub = _stub(serve(scorer=_BrokenCore()).target)
    assert _failure(lambda: call(stub)) == (Status.INTERNAL, "internal error")


def test_without_model_or_fallback_calls_are_unavailable(
    serve: Callable[..., LoopbackServer], unloaded_store: ModelStore
) -> None:
    """With no model loaded and the fallback disabled, Score and GetModelInfo are UNAVAILABLE."""
    settings_ = make_settings(fallback=FallbackSettings(policy="disabled"))
    server = serve(settings_, store=unloaded_store)
    stub = _stub(server.target)
    score_code, _ = _failure(lambda: stub.Score(_request(), timeout=TIMEOUT))
    info_code, _ = _failure(lambda: stub.GetModelInfo(scoring_pb2.GetModelInfoRequest()))
    assert (score_code, info_code) == (Status.UNAVAILABLE, Status.UNAVAILABLE)


# --- Deadlines and budget ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount_minor", "decision"),
    [(4999, scoring_pb2.DECISION_APPROVE), (5000, scoring_pb2.DECISION_REVIEW)],
)
def test_a_spent_budget_gets_the_fallback_decision(
    serve: Callable[..., LoopbackServer], amount_minor: int, decision: int
) -> None:
    """A budget shorter than the safety margin is spent on arrival: the rules answer."""
    server = serve(make_settings(budget=BudgetSettings(server_budget_ms=0.001)))
    fallbacks_before = _sample("fraud_fallback_total", reason="deadline")
    response = _stub(server.target).Score(_request(amount_minor=amount_minor), timeout=TIMEOUT)
    assert response.decision_source == scoring_pb2.DECISION_SOURCE_FALLBACK
    assert response.fallback_reason == "deadline"
    assert (response.decision, response.score, response.model_version) == (decision, 0.0, "")
    assert _sample("fraud_fallback_total", reason="deadline") == fallbacks_before + 1


@pytest.mark.parametrize(
    ("time_remaining", "expected"),
    [
        (None, 100.020),  # no client deadline: the server budget, from arrival
        (0.005, 100.007),  # the client's deadline, from now, is the earlier
        (3.0, 100.020),  # the server budget is the earlier
        (0.0, 100.002),  # the client has given up already
    ],
)
def test_the_answer_is_due_at_the_earlier_of_budget_and_client_deadline(
    time_remaining: float | None, expected: float
) -> None:
    """answer_by takes the earlier limit and keeps the safety margin back."""
    due = answer_by(100.0, 100.002, 0.020, time_remaining)
    assert due == pytest.approx(expected - SAFETY_MARGIN_SECONDS)


# --- Health, shedding, reflection ----------------------------------------------------------


def test_health_follows_the_model_and_the_shutdown(
    serve: Callable[..., LoopbackServer], unloaded_store: ModelStore
) -> None:
    """NOT_SERVING before the model is loaded, SERVING after, NOT_SERVING on shutdown."""
    store = unloaded_store
    server = serve(store=store)
    assert _health(server.target) == NOT_SERVING
    assert _health(server.target, SCORING_SERVICE_NAME) == NOT_SERVING
    early = _stub(server.target).Score(_request(), timeout=TIMEOUT)
    assert early.fallback_reason == "model_unavailable"

    server.run(watch_models(store, server.health).refresh())
    assert _health(server.target) == SERVING
    assert _health(server.target, SCORING_SERVICE_NAME) == SERVING

    updates = _health_stub(server.target).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=60
    )
    assert next(updates).status == SERVING
    stopping = server.submit(shut_down(server.server, server.health, TIMEOUT))
    assert next(updates).status == NOT_SERVING
    updates.cancel()
    stopping.result(timeout=60)


def test_calls_above_the_in_flight_limit_are_shed_but_health_still_answers(
    serve: Callable[..., LoopbackServer],
) -> None:
    """With max_in_flight unary calls open (here one whose request has not arrived yet), a
    new call is RESOURCE_EXHAUSTED at once; health is not limited. (Streams have a budget of
    their own: tests/service/grpc_api/test_call_limits.py.)"""
    server = serve(
        make_settings(
            server=ServerSettings(host="127.0.0.1", port=0, max_in_flight=1),
            connections=ConnectionSettings(request_read_seconds=60),
        )
    )
    channel = grpc.insecure_channel(server.target)
    stub = scoring_pb2_grpc.FraudScoringStub(channel)
    held = UnsentRequest(channel)
    _wait_until(lambda: _sample("fraud_rpc_in_flight") == 1)
    shed_before = _sample("fraud_shed_total")

    refused = _failure(lambda: stub.Score(_request("refused"), timeout=TIMEOUT))
    assert refused == (Status.RESOURCE_EXHAUSTED, OVERLOADED_DETAILS)
    assert _failure(lambda: stub.GetModelInfo(scoring_pb2.GetModelInfoRequest())) == refused
    assert _sample("fraud_shed_total") == shed_before + 2
    assert _health(server.target) == SERVING

    held.cancel()
    _wait_until(lambda: _sample("fraud_rpc_in_flight") == 0)
    assert stub.Score(_request("after"), timeout=TIMEOUT).transaction_id == "after"


def test_reflection_lists_the_services(serve: Callable[..., LoopbackServer]) -> None:
    """Server reflection names the scoring, health and reflection services (for grpcurl)."""
    channel = grpc.insecure_channel(serve().target)
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT)
    names = {service.name for service in response.list_services_response.service}
    assert {SCORING_SERVICE_NAME, "grpc.health.v1.Health"} <= names


def test_a_second_server_cannot_take_a_busy_port(
    serve: Callable[..., LoopbackServer], champion_store: ModelStore
) -> None:
    """With one worker, port reuse is off: a second server on the same port fails to bind."""
    server = serve()
    taken = make_settings(server=ServerSettings(host="127.0.0.1", port=server.port))
    with pytest.raises(BindError, match=f"127.0.0.1:{server.port}"):
        LoopbackServer(taken, _BrokenCore())


# --- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with a server and a client certificate, and an unrelated CA with its own client."""
    directory = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl(directory, "req", "-x509", *_new_key(ca), "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN={ca}", "-addext", "basicConstraints=critical,CA:TRUE")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogue", "other-ca")):
        _openssl(directory, "req", *_new_key(name), "-out", f"{name}.csr", "-subj", f"/CN={name}")
        _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem",
                 "-CAkey", f"{ca}.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", "san.ext")  # fmt: skip
    return directory


def _new_key(name: str) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key"]  # fmt: skip


def _openssl(directory: Path, *arguments: str) -> None:
    subprocess.run(["openssl", *arguments], cwd=directory, check=True, capture_output=True)


def _tls_settings(pki: Path, *, mutual: bool) -> ServeSettings:
    tls = TlsSettings(
        cert_file=pki / "server.pem",
        key_file=pki / "server.key",
        client_ca_file=pki / "ca.pem" if mutual else None,
    )
    return make_settings(tls=tls)


def _client_score(target: str, pki: Path, ca: str | None, client: str | None) -> grpc.StatusCode:
    """The status of one Score call from a client trusting `ca`, presenting `client`."""
    root = None if ca is None else (pki / f"{ca}.pem").read_bytes()
    key = None if client is None else (pki / f"{client}.key").read_bytes()
    chain = None if client is None else (pki / f"{client}.pem").read_bytes()
    with FraudScoringClient(
        target, timeout=TIMEOUT, root_certificates=root, private_key=key, certificate_chain=chain
    ) as scoring:
        try:
            scoring.score("tx-tls", "card", "term", 100, "EUR", datetime.now(UTC))
        except grpc.RpcError as error:
            failed: Any = error  # an RpcError that is also a grpc.Call
            code: grpc.StatusCode = failed.code()
            return code
    return Status.OK


@pytest.mark.parametrize(
    ("mutual", "ca", "client", "status"),
    [
        (False, None, None, Status.UNAVAILABLE),  # plain text to a TLS port
        (False, "other-ca", None, Status.UNAVAILABLE),  # the server's certificate is not trusted
        (False, "ca", None, Status.OK),
        (True, "ca", None, Status.UNAVAILABLE),  # no client certificate
        (True, "ca", "rogue", Status.UNAVAILABLE),  # a client certificate from another CA
        (True, "ca", "client", Status.OK),
    ],
    ids=["plaintext", "untrusted-server", "tls", "mtls-no-cert", "mtls-rogue-cert", "mtls"],
)
def test_tls_refuses_clients_without_the_right_certificates(
    serve: Callable[..., LoopbackServer],
    pki: Path,
    mutual: bool,
    ca: str | None,
    client: str | None,
    status: grpc.StatusCode,
) -> None:
    """TLS needs a client trusting the server's CA; mutual TLS also a client certificate."""
    server = serve(_tls_settings(pki, mutual=mutual))
    assert _client_score(server.target, pki, ca, client) == status


# --- Property: any request is answered OK or INVALID_ARGUMENT ------------------------------

_TEXT = st.one_of(
    st.text(max_size=200),
    st.builds(lambda char, count: char * count, st.characters(), st.integers(129, 2_000)),
)
_MAX_SECONDS = 253_402_300_799  # 9999-12-31, the latest Timestamp


def _valid_fields() -> dict[str, st.SearchStrategy[Any]]:
    ids = st.text("abcdefghij0123456789-", min_size=1, max_size=40)
    return {
        "transaction_id": ids,
        "card_id": st.one_of(ids, st.just(PAN), st.just(PAN.replace(" ", ""))),
        "terminal_id": ids,
        "merchant_id": st.one_of(st.just(""), ids),
        "amount_minor": st.integers(0, 10**7),
        "currency": st.sampled_from(["EUR", "USD", "JPY", "GBP", "BHD"]),
        "seconds_ago": st.integers(0, 90 * 86_400),
        "nanos": st.integers(0, 999_999_999),
        "mcc": st.integers(0, 9999),
        "entry_mode": st.sampled_from([int(mode) for mode in EntryMode]),
        "card_present": st.one_of(st.none(), st.booleans()),
        "country": st.sampled_from(["", "FR", "US", "JP"]),
    }


def _wild_fields() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "transaction_id": _TEXT,
        "card_id": _TEXT,
        "terminal_id": _TEXT,
        "merchant_id": _TEXT,
        "amount_minor": st.integers(-(2**63), 2**63 - 1),
        "currency": _TEXT,
        "seconds_ago": st.one_of(st.none(), st.integers(-_MAX_SECONDS, _MAX_SECONDS)),
        "nanos": st.integers(-(2**31), 2**31 - 1),
        "mcc": st.integers(0, 2**32 - 1),
        "entry_mode": st.integers(-(2**31), 2**31 - 1),
        "card_present": st.one_of(st.none(), st.booleans()),
        "country": _TEXT,
    }


def _transaction_fields() -> st.SearchStrategy[dict[str, Any]]:
    """All-valid field values half the time; otherwise each field valid or wild."""
    valid, wild = _valid_fields(), _wild_fields()
    mixed = {name: st.one_of(valid[name], wild[name]) for name in valid}
    return st.one_of(st.fixed_dictionaries(valid), st.fixed_dictionaries(mixed))


def _build(fields: dict[str, Any] | None) -> scoring_pb2.ScoreRequest:
    """The request for generated `fields`; None sends no transaction at all."""
    request = scoring_pb2.ScoreRequest()
    if fields is None:
        return request
    values = dict(fields)
    seconds_ago, nanos = values.pop("seconds_ago"), values.pop("nanos")
    card_present = values.pop("card_present")
    tx = request.transaction
    for name, value in values.items():
        setattr(tx, name, value)
    if card_present is not None:
        tx.card_present = card_present
    if seconds_ago is not None:
        tx.timestamp.seconds = int(time.time()) - seconds_ago
        tx.timestamp.nanos = nanos
    return request


def test_any_request_is_answered_ok_or_with_a_documented_refusal(
    serve: Callable[..., LoopbackServer], trained_model: TrainedModel
) -> None:
    """Thousands of generated requests all get OK, INVALID_ARGUMENT or, for an id the
    generator reuses with other content, ALREADY_EXISTS; health stays SERVING."""
    server = serve()
    stub = _stub(server.target)
    answered: dict[Status, int] = {}

    @settings(
        max_examples=1500,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.one_of(st.none(), _transaction_fields()))
    def answered_ok_or_invalid(fields: dict[str, Any] | None) -> None:
        try:
            stub.Score(_build(fields), timeout=TIMEOUT)
            code = Status.OK
        except grpc.RpcError as error:
            code = error.code()
        answered[code] = answered.get(code, 0) + 1
        assert code in (Status.OK, Status.INVALID_ARGUMENT, Status.ALREADY_EXISTS)

    answered_ok_or_invalid()
    assert answered[Status.OK] > 100
    assert answered[Status.INVALID_ARGUMENT] > 100
    assert _health(server.target) == SERVING
    assert _stub(server.target).Score(_request("after"), timeout=TIMEOUT).model_version == (
        trained_model.version
    )


# --- History replay helpers ----------------------------------------------------------------


def _history_requests(history: Path, *, days: int) -> Iterator[scoring_pb2.ScoreRequest]:
    """The simulated history's first `days` days as Score requests."""
    with history.open(newline="", encoding="utf-8") as file:
        rows = csv.DictReader(file)
        first = None
        for row in rows:
            when = datetime.fromisoformat(row["timestamp"])
            first = first or when
            if when - first >= timedelta(days=days):
                return
            yield request_from_row(row)
