"""Replicas behind a client that balances calls one by one: three `fraud-serve` processes
on one redis-server, called through one channel with the recommended service config
(`round_robin` over the three addresses), share the calls evenly and score a history
exactly as `fraud-train evaluate` does, outcomes reaching whichever replica the balancer
picks (see tests/test_serving_parity.py, whose feed and offline run this reuses, on a
history of its own: larger, for 30,000 calls); a replica stopped while calls flow fails
none of them; a rolling restart of the three while the parity tests' history flows fails
no call and changes no score; and a promotion reaches all three within their poll
interval and a second, failing no call."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import grpc
import pytest

from benchmarks.servers.launch import free_ports
from service.features import FeatureConfig
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.grpc_api.client import CHANNEL_OPTIONS, FraudScoringClient, balanced_target
from service.records.schema import RecordKind, segment_glob
from tests.conftest import TrainedModel
from tests.parity_feed import CALL_TIMEOUT, Batch, model_scores
from tests.parity_history import OfflineRun, fed_in_order, offline_run, simulated_history
from tests.test_hot_reload import registry
from tests.test_redis_parity import _start_on_redis
from tests.test_serving_parity import _assert_match, _decisions_by_process, _target
from training.registry.publishing import promote
from training.simulation.params import SimulationParams

__all__ = ["registry"]
POLL_SECONDS = 1.0
SPREAD_CALLS = 30_000
IN_FLIGHT = 8


@pytest.fixture(scope="module")
def spread_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parity tests' unseen history (tests/parity_history.py: another seed than the
    model's), on 300 cards and 600 terminals instead of 100 and 200 and for 44 days
    instead of 40: fed whole, 30,446 calls (8,974 for the parity tests' own)."""
    params = SimulationParams(customers=300, terminals=600, days=44, seed=5)
    return simulated_history(tmp_path_factory, params)


@pytest.fixture(scope="module")
def spread_offline(
    trained_model: TrainedModel, spread_history: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OfflineRun]:
    yield from offline_run(spread_history, trained_model.registry, tmp_path_factory)


@pytest.fixture(scope="module")
def spread_batches(spread_history: Path, champion_config: FeatureConfig) -> list[Batch]:
    return fed_in_order(spread_history, champion_config)


class BalancedCalls:
    """One channel over every replica, as a POS backend is told to open it: each
    transaction is a unary Score call, and the balancer picks the replica of each call."""

    def __init__(self, targets: Sequence[str]) -> None:
        self.calls = 0
        self._channel = grpc.insecure_channel(balanced_target(targets), options=CHANNEL_OPTIONS)
        self._stub = scoring_pb2_grpc.FraudScoringStub(self._channel)

    def feed_at_once(
        self,
        fed: Iterable[Batch],
        in_flight: int,
        hold: Callable[[int], None] = lambda sent: None,
    ) -> dict[str, float]:
        """What `feed` returns, with up to `in_flight` calls outstanding, as a POS backend's
        concurrent swipes are: each call, sent in the history's order, first waits for the
        earlier ones that name its card, terminal or merchant (an outcome: its
        transaction's), so that the shared state counts each entity's transactions and
        labels in the order `fraud-train evaluate` does. `hold` is called with the number of
        calls sent so far before each, and may wait."""
        order: EntityOrder[Sent] = EntityOrder()
        outstanding: deque[Sent] = deque()
        scored: list[Sent] = []

        def send(method: Any, message: Any, what: str, entities: list[Entity]) -> Sent:
            hold(self.calls)
            for earlier in order.before(entities):
                earlier.answer()
            while len(outstanding) >= in_flight:
                outstanding.popleft().answer()
            sent = Sent(what, method.future(message, timeout=CALL_TIMEOUT))
            self.calls += 1
            order.sent(sent, entities)
            outstanding.append(sent)
            return sent

        for batch in fed:
            for outcome in batch.outcomes:
                transaction_id = outcome.transaction_id
                entities = order.of_transaction(transaction_id)
                send(self._stub.ReportOutcome, outcome, f"ReportOutcome {transaction_id}", entities)
            for request in batch.requests:
                what = f"Score {request.transaction.transaction_id}"
                scored.append(send(self._stub.Score, request, what, order.of_request(request)))
        for sent in outstanding:  # an outcome's failure too
            sent.answer()
        return model_scores(sent.answer() for sent in scored)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self._channel.close()


@dataclass(frozen=True)
class Sent:
    """A call sent without waiting (`what` names it in a failure) and its future."""

    what: str
    call: grpc.Future[Any]

    def answer(self) -> Any:
        """The call's answer, once it has come; fails naming the call if it failed."""
        try:
            return self.call.result()
        except grpc.RpcError as error:  # which call failed, for the test's report
            raise AssertionError(f"{self.what}: {error}") from None


Entity = tuple[str, str]
Call = TypeVar("Call")


class EntityOrder(Generic[Call]):
    """The last call sent that named each card, terminal and merchant, and the entities of
    each transaction scored: what `BalancedCalls.feed_at_once` waits for."""

    def __init__(self) -> None:
        self._last: dict[Entity, Call] = {}
        self._of_transaction: dict[str, list[Entity]] = {}

    def of_request(self, request: scoring_pb2.ScoreRequest) -> list[Entity]:
        """The entities a Score call counts its transaction on (an empty merchant: none)."""
        tx = request.transaction
        named = [("card", tx.card_id), ("terminal", tx.terminal_id), ("merchant", tx.merchant_id)]
        entities = [entity for entity in named if entity[1]]
        self._of_transaction[tx.transaction_id] = entities
        return entities

    def of_transaction(self, transaction_id: str) -> list[Entity]:
        """The entities an outcome changes: those its transaction, scored earlier, named."""
        return self._of_transaction[transaction_id]

    def before(self, entities: list[Entity]) -> list[Call]:
        """What a call naming `entities` waits for: the last call that named each."""
        return [self._last[entity] for entity in entities if entity in self._last]

    def sent(self, call: Call, entities: list[Entity]) -> None:
        for entity in entities:
            self._last[entity] = call


def test_three_replicas_behind_round_robin_share_the_calls_and_score_as_evaluate(
    trained_model: TrainedModel,
    spread_batches: list[Batch],
    spread_offline: OfflineRun,
    start_process: Any,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Every transaction of a 44-day history, and every fraud label as it becomes known,
    is one call through the balanced channel, 30,000 and more, up to `IN_FLIGHT` at once
    (each after the earlier ones naming its card, terminal or merchant): each replica
    answers a third of the calls and decides a third of the transactions (within 10%),
    none is decided twice, and every score matches `fraud-train evaluate` within 1e-6."""
    replicas = [_start_on_redis(start_process, trained_model, redis_url) for _ in range(3)]
    targets = [_target(replica) for replica in replicas]
    with BalancedCalls(targets) as link:
        online = link.feed_at_once(spread_batches, IN_FLIGHT)
    for replica in replicas:
        replica.signal(signal.SIGTERM)
        assert replica.wait() == 0, replica.text()

    assert link.calls >= SPREAD_CALLS
    assert online.keys() == spread_offline.scores.keys()
    _assert_match(online, spread_offline.scores)
    answered = _calls_by_process(tmp_path)
    assert sum(answered.values()) == link.calls, "each call is answered once, by one replica"
    _assert_even([answered[replica.process.pid] for replica in replicas])
    decided = _decisions_by_process(tmp_path / "decisions")
    _assert_even([len(decided.get(replica.process.pid, [])) for replica in replicas])
    counts = Counter(tx for ids in decided.values() for tx in ids)
    assert max(counts.values()) == 1, "no transaction is decided by two replicas"


def test_a_call_waits_for_the_last_one_naming_its_card_terminal_or_merchant() -> None:
    """The concurrent feed's order: a call waits for the last earlier call naming each of
    its entities, an outcome for the last naming any of its transaction's; an empty
    merchant names none."""

    def request(number: int, card: str, terminal: str, merchant: str) -> scoring_pb2.ScoreRequest:
        transaction = scoring_pb2.Transaction(
            transaction_id=f"tx-{number}", card_id=card, terminal_id=terminal,
            merchant_id=merchant,
        )  # fmt: skip
        return scoring_pb2.ScoreRequest(transaction=transaction)

    requests = [
        request(0, "card-1", "term-1", "m-1"),
        request(1, "card-2", "term-2", ""),
        request(2, "card-3", "term-3", "m-3"),
        request(3, "card-4", "term-4", ""),
        request(4, "card-3", "term-1", "m-9"),  # after 0 (term-1) and 2 (card-3)
        request(5, "card-5", "term-5", "m-3"),  # after 2 (m-3)
        request(6, "card-6", "term-6", ""),  # after none
    ]
    order: EntityOrder[str] = EntityOrder()
    waited = []
    for position, each in enumerate(requests):
        entities = order.of_request(each)
        waited.append(sorted(order.before(entities)))
        order.sent(f"score-{position}", entities)
    outcome_entities = order.of_transaction("tx-0")  # card-1, term-1 (last: 4), m-1
    outcome_waits = sorted(order.before(outcome_entities))
    order.sent("outcome-0", outcome_entities)

    assert waited == [[], [], [], [], ["score-0", "score-2"], ["score-2"], []]
    assert outcome_waits == ["score-0", "score-0", "score-4"]
    assert order.before(order.of_request(request(7, "card-1", "term-9", ""))) == ["outcome-0"]


def _assert_even(shares: list[int]) -> None:
    mean = sum(shares) / len(shares)
    assert all(abs(share - mean) <= 0.1 * mean for share in shares), shares


def _calls_by_process(directory: Path) -> Counter[int]:
    """The calls each server process answered, by process id: a line for each Score in its
    decision log, for each ReportOutcome in its outcome log or quarantine."""
    logs: list[tuple[str, RecordKind]] = [
        ("decisions", "decisions"), ("outcomes", "outcomes"), ("outcomes", "quarantine"),
    ]  # fmt: skip
    calls: Counter[int] = Counter()
    for log, kind in logs:
        for segment in (directory / log).glob(segment_glob(kind)):
            pid = int(segment.stem.split("-")[-2])  # <kind>-<opened>-<host>-<pid>-<seq>
            calls[pid] += len(segment.read_bytes().splitlines())
    return calls


def test_a_replica_listening_without_a_model_gets_no_call_of_the_balanced_channel(
    trained_model: TrainedModel, start_process: Any, redis_url: str, tmp_path: Path
) -> None:
    """A replica opens its port before it loads its model (probes get NOT_SERVING, calls
    the fallback), as each one restarted in a rolling update does; an empty registry keeps
    one so. The balanced channel sends it nothing until it serves: every answer of 100
    calls comes from the model of the other. (Found by the rolling restart under load: a
    replica whose model took 22 s to load answered "model_unavailable".)"""
    empty_registry = tmp_path / "no-model-yet"
    empty_registry.mkdir()
    serving = _start_on_redis(start_process, trained_model, redis_url)
    loading = _start_on_redis(start_process, trained_model, redis_url, registry=empty_registry)
    targets = [_target(serving), f"127.0.0.1:{loading.wait_for('listening')['port']}"]
    sources: Counter[str] = Counter()
    with FraudScoringClient(targets, timeout=10.0) as client:
        for number in range(100):
            answer = client.score(
                f"loading-{number}", f"card-{number % 10}", "term-1", 1250, "EUR",
                datetime.now(UTC) - timedelta(minutes=1),
            )  # fmt: skip
            sources[answer.fallback_reason or "model"] += 1
    for replica in (serving, loading):
        replica.signal(signal.SIGTERM)
        assert replica.wait() == 0, replica.text()

    assert sources == {"model": 100}


def test_a_replica_stopped_while_calls_flow_fails_none_of_them(
    trained_model: TrainedModel, start_process: Any, redis_url: str, tmp_path: Path
) -> None:
    """A client balancing over two replicas sends calls one after another; one replica is
    sent SIGTERM halfway: it finishes what it holds and exits 0, the client's calls go on
    to the other (those refused while it shut down are tried again there), and every call
    gets the model's answer."""
    replicas = [_start_on_redis(start_process, trained_model, redis_url) for _ in range(2)]
    targets = [_target(replica) for replica in replicas]
    answered: list[str] = []
    failed: list[str] = []
    halfway = threading.Event()

    def call() -> None:
        with FraudScoringClient(targets, timeout=10.0) as client:
            for number in range(600):
                if number == 300:
                    halfway.set()
                transaction_id = f"rolling-{number}"
                try:
                    answer = client.score(
                        transaction_id, f"card-{number % 40}", "term-1", 1250, "EUR",
                        datetime.now(UTC) - timedelta(hours=1),
                    )  # fmt: skip
                except grpc.RpcError as error:  # each failure is the finding
                    failed.append(f"{transaction_id}: {error}")
                else:
                    assert answer.decision_source == scoring_pb2.DECISION_SOURCE_MODEL
                    answered.append(transaction_id)

    caller = threading.Thread(target=call)
    caller.start()
    assert halfway.wait(timeout=120)
    replicas[0].signal(signal.SIGTERM)
    assert replicas[0].wait() == 0, replicas[0].text()
    caller.join(timeout=300)
    replicas[1].signal(signal.SIGTERM)
    assert replicas[1].wait() == 0, replicas[1].text()

    assert failed == []
    assert len(answered) == 600
    decided = _decisions_by_process(tmp_path / "decisions")
    assert set(decided) == {replica.process.pid for replica in replicas}
    assert len(decided[replicas[1].process.pid]) > 300  # the survivor took the rest


def test_a_rolling_restart_fails_no_call_and_changes_no_score(
    trained_model: TrainedModel,
    history_batches: list[Batch],
    offline: OfflineRun,
    start_process: Any,
    redis_url: str,
) -> None:
    """Three replicas behind the balanced channel; while the history flows through it, each
    in turn gets SIGTERM, exits 0 and is started again on its port, as a Deployment's
    rolling update does: no call fails (those refused while a replica stops are tried again
    on another) and every score matches `fraud-train evaluate` within 1e-6. The parity
    tests' history, 8,974 calls, flows up to `IN_FLIGHT` at once; a replica gets SIGTERM
    once a fifth of them has been sent, the second when two fifths have, the third at three,
    and the calls wait at two, three and four fifths until the replica before serves again:
    each restart starts while calls flow (1,795 to go before the wait), and the last fifth
    flows through the three restarted."""
    ports = [free_ports(1) for _ in range(3)]
    replicas = [_start_on_redis(start_process, trained_model, redis_url, port) for port in ports]
    for replica in replicas:
        replica.wait_for("serving")
    total = sum(len(batch.requests) + len(batch.outcomes) for batch in history_batches)
    restarted = [threading.Event() for _ in ports]

    def after_restarts(sent: int) -> None:
        for turn, serving in enumerate(restarted):
            if sent >= total * (turn + 2) // 5:
                assert serving.wait(timeout=300), f"replica {turn} did not serve again"

    online: dict[str, float] = {}
    failures: list[BaseException] = []
    with BalancedCalls([f"127.0.0.1:{port}" for port in ports]) as link:

        def flow() -> None:
            try:
                online.update(link.feed_at_once(history_batches, IN_FLIGHT, after_restarts))
            except BaseException as error:  # the test's finding: reported below
                failures.append(error)

        caller = threading.Thread(target=flow)
        caller.start()
        for turn, port in enumerate(ports):
            _wait_until(lambda turn=turn: link.calls > total * (turn + 1) // 5 or failures)
            replicas[turn].signal(signal.SIGTERM)
            assert replicas[turn].wait() == 0, replicas[turn].text()
            replicas[turn] = _start_on_redis(start_process, trained_model, redis_url, port)
            replicas[turn].wait_for("serving")
            restarted[turn].set()
        caller.join(timeout=600)
    for replica in replicas:
        replica.signal(signal.SIGTERM)
        assert replica.wait() == 0, replica.text()

    assert failures == []
    assert online.keys() == offline.scores.keys()
    _assert_match(online, offline.scores)


def _wait_until(done: Any, seconds: float = 300.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "the calls stopped flowing"
        time.sleep(0.05)


def test_a_promotion_reaches_every_replica_within_the_poll_and_fails_no_call(
    registry: Path,
    trained_model: TrainedModel,
    other_model: TrainedModel,
    start_process: Any,
    redis_url: str,
) -> None:
    """Three replicas following one registry (every `POLL_SECONDS`), calls flowing through
    the balanced channel: a promotion is served by all three within the poll interval and a
    second (each says so in GetModelInfo, as ops watch a rollout converge), and no call
    fails meanwhile."""
    environment = {"FRAUD_MODELS__POLL_SECONDS": str(POLL_SECONDS)}
    replicas = [
        _start_on_redis(start_process, trained_model, redis_url, registry=registry,
                        environment=environment)
        for _ in range(3)
    ]  # fmt: skip
    targets = [_target(replica) for replica in replicas]
    stop = threading.Event()
    failed: list[str] = []
    versions: Counter[str] = Counter()

    def call() -> None:
        with FraudScoringClient(targets, timeout=10.0) as client:
            number = 0
            while not stop.is_set():
                number += 1
                try:
                    answer = client.score(
                        f"promotion-{number}", f"card-{number % 50}", "term-1", 990, "EUR",
                        datetime.now(UTC) - timedelta(minutes=5),
                    )  # fmt: skip
                except grpc.RpcError as error:  # each failure is the finding
                    failed.append(str(error))
                else:
                    versions[answer.model_version] += 1

    caller = threading.Thread(target=call)
    caller.start()
    _wait_until(lambda: sum(versions.values()) >= 100 or failed)
    promote(registry, other_model.version, reason="a rollout over three replicas")
    promoted = time.monotonic()
    took: list[float] = []
    for target in targets:
        with FraudScoringClient(target, timeout=10.0) as info:
            _wait_until(lambda info=info: info.model_info().version == other_model.version)
            took.append(time.monotonic() - promoted)
    _wait_until(lambda: versions[other_model.version] >= 100 or failed)
    stop.set()
    caller.join(timeout=60)
    for replica in replicas:
        replica.signal(signal.SIGTERM)
        assert replica.wait() == 0, replica.text()

    assert failed == []
    assert max(took) <= POLL_SECONDS + 1.0, took
    assert set(versions) == {trained_model.version, other_model.version}
