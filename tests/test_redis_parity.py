"""Serving parity across replicas: two `fraud-serve` processes sharing one redis-server,
called in turn, score a history exactly as `fraud-train evaluate` does (the history and
offline run of tests/test_serving_parity.py, tests/parity_history.py); and so they do
when one of them is SIGKILLed with a call in flight and another takes its place."""

from __future__ import annotations

import itertools
import signal
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import grpc

from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from tests.conftest import TrainedModel
from tests.parity_feed import (
    CALL_TIMEOUT,
    Batch,
    RotatingChannels,
    feed,
    kill_while_scoring,
    model_scores,
    retry_one_by_one,
    split,
)
from tests.parity_history import OfflineRun
from tests.server_process import ServerProcess
from tests.test_serving_parity import (
    CHUNK_SIZE,
    _assert_match,
    _decisions_by_process,
    _is_full,
    _target,
)


class AlternatingServers:
    """One channel to each of `targets`; every call goes to the next server in turn, a
    ScoreStream of its own for each batch."""

    def __init__(self, targets: Sequence[str]) -> None:
        self._channels = [grpc.insecure_channel(target) for target in targets]
        self._stubs = itertools.cycle(
            [scoring_pb2_grpc.FraudScoringStub(channel) for channel in self._channels]
        )

    def report(self, outcome: scoring_pb2.OutcomeRequest) -> None:
        next(self._stubs).ReportOutcome(outcome, timeout=CALL_TIMEOUT)  # raises unless OK

    def score(
        self, requests: Sequence[scoring_pb2.ScoreRequest]
    ) -> list[scoring_pb2.ScoreResponse]:
        return list(next(self._stubs).ScoreStream(iter(requests), timeout=CALL_TIMEOUT))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        for channel in self._channels:
            channel.close()


def test_two_replicas_on_one_redis_score_as_evaluate_whichever_answers(
    trained_model: TrainedModel,
    history_batches: list[Batch],
    offline: OfflineRun,
    start_process: Any,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Two server processes on one Redis, called in turn a few transactions at a time, an
    outcome reaching either: both answer, each transaction is decided once, and every
    score matches `fraud-train evaluate` within 1e-6."""
    replicas = [_start_on_redis(start_process, trained_model, redis_url) for _ in range(2)]
    targets = [f"127.0.0.1:{replica.wait_for('serving')['port']}" for replica in replicas]
    with AlternatingServers(targets) as link:
        online = feed(link, split(history_batches, CHUNK_SIZE))
    for replica in replicas:
        replica.signal(signal.SIGTERM)
        assert replica.wait() == 0, replica.text()

    assert online.keys() == offline.scores.keys()
    _assert_match(online, offline.scores)
    decided = _decisions_by_process(tmp_path / "decisions")
    assert decided.keys() == {replica.process.pid for replica in replicas}
    counts = Counter(tx for ids in decided.values() for tx in ids)
    assert counts.keys() == online.keys()
    assert max(counts.values()) == 1, "no transaction is decided by both replicas"


def test_replica_killed_mid_call_on_one_redis_survivor_and_replacement_score_as_evaluate(
    trained_model: TrainedModel,
    history_batches: list[Batch],
    offline: OfflineRun,
    start_process: Any,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Two replicas on one Redis called in turn; halfway through the history one is
    SIGKILLed with a call in flight, whose transactions the client sends again to the
    survivor one by one, then calls the survivor and a replacement replica in turn: every
    other transaction scores as the uninterrupted `fraud-train evaluate` run within 1e-6,
    so does any answer the interrupted ones got, and none is decided twice."""
    chunks = list(split(history_batches, CHUNK_SIZE))
    # The first full chunk from halfway on, as in the LMDB crash test: the more in flight,
    # the likelier the kill lands between counting a transaction and answering it.
    halfway = len(chunks) // 2
    killed_at = next(at for at in range(halfway, len(chunks)) if _is_full(chunks[at]))
    interrupted = chunks[killed_at]
    victim, survivor = [_start_on_redis(start_process, trained_model, redis_url) for _ in (1, 2)]
    victim_at, survivor_at = _target(victim), _target(survivor)  # once: each waits for a log line
    with AlternatingServers([victim_at, survivor_at]) as link:
        online = feed(link, chunks[:killed_at])
        for outcome in interrupted.outcomes:
            link.report(outcome)
    with grpc.insecure_channel(victim_at) as channel:
        stub = scoring_pb2_grpc.FraudScoringStub(channel)
        answered = kill_while_scoring(victim, stub, interrupted.requests)
    assert victim.process.returncode == -signal.SIGKILL
    # Started at once, it loads while the survivor takes the retries.
    replacement = _start_on_redis(start_process, trained_model, redis_url)
    with RotatingChannels(survivor_at, 1) as link:
        answered += retry_one_by_one(link, interrupted.requests)
    with AlternatingServers([survivor_at, _target(replacement)]) as link:
        online |= feed(link, chunks[killed_at + 1 :])
    for replica in (survivor, replacement):
        replica.signal(signal.SIGTERM)
        assert replica.wait() == 0, replica.text()

    in_flight = {request.transaction.transaction_id for request in interrupted.requests}
    assert online.keys() == offline.scores.keys() - in_flight
    _assert_match(online | model_scores(answered), offline.scores)
    decided = _decisions_by_process(tmp_path / "decisions")  # the victim's may lack a tail
    assert {survivor.process.pid, replacement.process.pid} <= decided.keys()
    counts = Counter(tx for ids in decided.values() for tx in ids)
    assert max(counts.values()) == 1, "no transaction is decided twice, retried or not"


def _start_on_redis(
    start_process: Any,
    trained_model: TrainedModel,
    url: str,
    port: int = 0,
    *,
    registry: Path | None = None,
    environment: dict[str, str] | None = None,
) -> ServerProcess:
    """`python -m service` serving the champion of `registry` (by default the trained
    model's) on `port` (0: a free one), its state on `url`; `environment` adds settings."""
    arguments = [
        "--registry", str(registry or trained_model.registry),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--metrics-port", "0",
    ]  # fmt: skip
    settings = {
        "FRAUD_STATE__BACKEND": "redis",
        "FRAUD_STATE__URL": url,
        # Generous, like the budget: a fallback on a busy machine would prove nothing.
        "FRAUD_STATE__TIMEOUT_SECONDS": "5",
        "FRAUD_BUDGET__SERVER_BUDGET_MS": "60000",
    }
    process: ServerProcess = start_process(*arguments, environment=settings | (environment or {}))
    return process
