"""A stream transaction's budget over real loopback gRPC, with a stand-in core that records
how much of it was left when the transaction reached the core."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence

import grpc
import pytest

from service.config.settings import BudgetSettings, ServerSettings, ServeSettings
from service.core.domain import (
    Decision,
    DecisionSource,
    ModelSummary,
    RawOutcome,
    RawTransaction,
    ScoreResult,
)
from service.core.scoring import BatchAnswers
from service.grpc_api._proto.fraud.v1 import scoring_pb2_grpc
from tests.service.grpc_api.held_calls import score_request
from tests.service.loopback import LoopbackServer

TIMEOUT = 30.0  # generous: the machine is shared; no test relies on it running out
BUDGET_MS = 30.0
# Each turn of the server's event loop is held this long by another task, longer than the
# budget: as a long batch of another stream holds it.
HELD_SECONDS = 0.06
TRANSACTIONS = 4


class RecordingCore:
    """Approves at once, keeping how much of each transaction's budget was left."""

    def __init__(self) -> None:
        self.budget_left: list[float] = []

    def score(self, raw: RawTransaction, *, deadline: float | None) -> ScoreResult:
        raise AssertionError("a stream's transactions come in batches")

    def score_batch(
        self,
        requests: Sequence[tuple[RawTransaction, float | None]],
        *,
        validate_all_first: bool = False,
    ) -> BatchAnswers:
        now = time.monotonic()
        answers = []
        for raw, deadline in requests:
            assert deadline is not None
            self.budget_left.append(deadline - now)
            answers.append(
                ScoreResult(
                    raw.transaction_id, 0.01, Decision.APPROVE, (), "v1", DecisionSource.MODEL, None
                )
            )
        return BatchAnswers(answers)

    def report_outcome(self, raw: RawOutcome) -> None:
        """Accepts every outcome."""

    def model_summary(self) -> ModelSummary:
        raise NotImplementedError


@pytest.fixture
def served() -> Iterator[tuple[LoopbackServer, RecordingCore]]:
    core = RecordingCore()
    settings = ServeSettings(
        server=ServerSettings(host="127.0.0.1", port=0),
        budget=BudgetSettings(server_budget_ms=BUDGET_MS),
    )
    server = LoopbackServer(settings, core)
    yield server, core
    server.stop()


async def _hold_every_turn(until: threading.Event) -> None:
    while not until.is_set():
        time.sleep(HELD_SECONDS)  # holds the loop, as scoring does
        await asyncio.sleep(0)


def test_a_transaction_read_ahead_has_its_whole_budget_when_taken_up(
    served: tuple[LoopbackServer, RecordingCore],
) -> None:
    """Found by test_server's day of history in one stream, which got "deadline" fallbacks
    once streams were read ahead: a transaction read while the loop is held longer than
    the budget still has its budget when the handler takes it up, as it had when a stream
    was read one transaction at a time (waiting to be read is not counted either)."""
    server, core = served
    released = threading.Event()
    holding = server.submit(_hold_every_turn(released))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = scoring_pb2_grpc.FraudScoringStub(channel)
            requests = [score_request(f"tx-{n}") for n in range(TRANSACTIONS)]
            answers = list(stub.ScoreStream(iter(requests), timeout=TIMEOUT))
    finally:
        released.set()
        holding.result(timeout=TIMEOUT)
    assert [answer.transaction_id for answer in answers] == [f"tx-{n}" for n in range(TRANSACTIONS)]
    assert len(core.budget_left) == TRANSACTIONS
    assert min(core.budget_left) > 0
