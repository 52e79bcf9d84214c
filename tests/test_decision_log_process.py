"""The decision and outcome logs of a real `fraud-serve` process: every answer kept across a
restart, and a full disk (a kernel-enforced file size limit) that fails no request."""

from __future__ import annotations

import itertools
import json
import resource
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.core.card_tokens import CardTokenizer
from service.features import FEATURES
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.grpc_api.client import build_outcome_request, build_score_request
from tests.conftest import TrainedModel
from tests.load_driver import history_requests
from tests.metrics_scrape import scrape, value
from tests.server_process import ServerProcess

CALL_TIMEOUT = 10.0
WAIT_SECONDS = 60.0
PAN = "4111111111111111"  # Luhn-valid test card number
CARD_TOKEN_KEY = "a-production-key-for-this-test"
FIRST_RUN = 20
SECOND_RUN = 10
BATCH = 5  # swipes before, during and after the full disk
DECISION = {
    scoring_pb2.DECISION_APPROVE: "APPROVE",
    scoring_pb2.DECISION_REVIEW: "REVIEW",
    scoring_pb2.DECISION_DECLINE: "DECLINE",
}

Start = Callable[..., ServerProcess]


class Server:
    """A started `fraud-serve` process: its stub and its metrics."""

    def __init__(self, process: ServerProcess) -> None:
        serving = process.wait_for("serving")
        self.process = process
        self.channel = grpc.insecure_channel(f"127.0.0.1:{serving['port']}")
        self.stub = scoring_pb2_grpc.FraudScoringStub(self.channel)
        self._metrics_url = f"http://127.0.0.1:{serving['metrics_port']}/metrics"

    def score(self, requests: Iterator[scoring_pb2.ScoreRequest]) -> dict[str, Any]:
        """Each request's answer, by transaction id; every call must succeed."""
        answers = (self.stub.Score(request, timeout=CALL_TIMEOUT) for request in requests)
        return {answer.transaction_id: answer for answer in answers}

    def record_log_count(self, metric: str, **labels: str) -> float:
        """The value of `metric` (a record log counter) with `labels` in /metrics."""
        return value(scrape(self._metrics_url), metric, log="decisions", **labels)

    def wait_for_count(self, metric: str, total: float, **labels: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while self.record_log_count(metric, **labels) < total:
            assert time.monotonic() < deadline, f"{metric} {labels} never reached {total}"
            time.sleep(0.05)

    def stop(self) -> None:
        self.channel.close()
        self.process.signal(signal.SIGTERM)
        assert self.process.wait() == 0


@pytest.fixture
def serve(start_process: Start, trained_model: TrainedModel) -> Callable[[], Server]:
    """Start fraud-serve; `start_process` keeps its decisions and outcomes in tmp_path."""

    def start() -> Server:
        return Server(
            start_process(
                "--registry", str(trained_model.registry), "--host", "127.0.0.1",
                "--port", "0", "--metrics-port", "0",
                environment={
                    "FRAUD_LOGGING__SAMPLE_RATE": "0",
                    # Model answers only, however busy the machine: each has its features.
                    "FRAUD_BUDGET__SERVER_BUDGET_MS": "5000",
                    "FRAUD_CARD_TOKEN_KEY": CARD_TOKEN_KEY,
                },
            )
        )  # fmt: skip

    return start


def swipes(history: Path, prefix: str, count: int) -> Iterator[scoring_pb2.ScoreRequest]:
    return itertools.islice(history_requests(history, prefix), count)


def recent_swipes(*ids_and_cards: tuple[str, str]) -> Iterator[scoring_pb2.ScoreRequest]:
    """Swipes of an hour ago (outcomes of the history's old ones would be too late to count)."""
    when = datetime.now(UTC) - timedelta(hours=1)
    for transaction_id, card_id in ids_and_cards:
        yield build_score_request(transaction_id, card_id, "term-1", 1_250, "EUR", when)


def lines(directory: Path) -> dict[Path, list[dict[str, Any]]]:
    """Each segment's JSON lines, by segment."""
    return {
        segment: [json.loads(line) for line in segment.read_text().splitlines()]
        for segment in sorted(directory.iterdir())
    }


def test_every_decision_is_kept_across_a_restart(
    serve: Callable[[], Server], trained_model: TrainedModel, tmp_path: Path
) -> None:
    """Decisions before and after a SIGTERM and restart are all in the decision log, once
    each, as answered, with every feature; a card number in none of its files; outcomes
    reported before the restart are in the outcome log, and so is one reported after it for
    a transaction scored before (NOT_FOUND to the caller: the new process's features do
    not know it; a label for retraining all the same)."""
    history = trained_model.history
    server = serve()
    before = server.score(swipes(history, "first-", FIRST_RUN))
    recent = server.score(recent_swipes(("recent-0", PAN), ("recent-1", "card-1")))
    for transaction_id in recent:
        outcome = build_outcome_request(transaction_id, True, datetime.now(UTC))
        server.stub.ReportOutcome(outcome, timeout=CALL_TIMEOUT)
    server.stop()
    server = serve()
    after = server.score(swipes(history, "second-", SECOND_RUN))
    scored_before = next(iter(before))
    late = build_outcome_request(scored_before, False, datetime.now(UTC))
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.ReportOutcome(late, timeout=CALL_TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    server.stop()

    answers = before | recent | after
    segments = lines(tmp_path / "decisions")
    decisions = [decision for segment in segments.values() for decision in segment]
    assert len({segment.stem.split("-")[-2] for segment in segments}) == 2  # by process id
    assert len(decisions) == FIRST_RUN + len(recent) + SECOND_RUN
    assert {decision["transaction_id"] for decision in decisions} == set(answers)
    for decision in decisions:
        answer = answers[decision["transaction_id"]]
        assert decision["score"] == pytest.approx(answer.score, rel=1e-6)
        assert decision["decision"] == DECISION[answer.decision]
        assert decision["model_version"] == answer.model_version == trained_model.version
        assert len(decision["features"]) == len(FEATURES)
    for segment in segments:
        assert PAN not in segment.read_text()
    cards = {decision["transaction_id"]: decision["card"] for decision in decisions}
    assert cards["recent-0"] == CardTokenizer(CARD_TOKEN_KEY.encode()).token(PAN)
    outcomes = [outcome for segment in lines(tmp_path / "outcomes").values() for outcome in segment]
    assert [(outcome["transaction_id"], outcome["is_fraud"]) for outcome in outcomes] == [
        *((transaction_id, True) for transaction_id in recent),
        (scored_before, False),
    ]


def test_a_full_disk_fails_no_request_and_the_log_recovers(
    serve: Callable[[], Server], trained_model: TrainedModel, tmp_path: Path
) -> None:
    """With the server's file size limit at 0 every write to a file fails (EFBIG): requests
    still succeed, the decisions are counted as write errors and logged once; with the limit
    restored, later decisions are written again, to a fresh segment."""
    requests = history_requests(trained_model.history, "disk-")
    server = serve()
    pid = server.process.process.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    written = server.score(itertools.islice(requests, BATCH))
    server.wait_for_count("fraud_record_log_written_total", BATCH)

    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))
    lost = server.score(itertools.islice(requests, BATCH))
    server.wait_for_count("fraud_record_log_dropped_total", BATCH, reason="write_error")
    failure = server.process.wait_for("record_log_write_failed")
    assert failure["log"] == "decisions"
    assert "File too large" in failure["error"]  # EFBIG

    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    recovered = server.score(itertools.islice(requests, BATCH))
    server.wait_for_count("fraud_record_log_written_total", 2 * BATCH)
    assert server.process.wait_for("record_log_recovered")["log"] == "decisions"
    dropped = server.record_log_count("fraud_record_log_dropped_total", reason="write_error")
    assert dropped == BATCH
    server.stop()

    assert server.process.events().count("record_log_write_failed") == 1
    kept = {
        segment: {decision["transaction_id"] for decision in decisions}
        for segment, decisions in lines(tmp_path / "decisions").items()
        if decisions
    }
    assert list(kept.values()) == [set(written), set(recovered)]
    assert not set(lost) & set().union(*kept.values())
