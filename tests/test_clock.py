"""A `fraud-serve` process whose wall clock is wrong: ten minutes behind the terminals, every
swipe is answered (by the fallback rules, counted with the skew) and none refused; a year
ahead, retention deletes no record segment of the days before."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.grpc_api.client import build_outcome_request, build_score_request
from service.records.schema import RecordKind, iso_utc, segment_name
from tests.clocked_server import ClockedServer
from tests.conftest import TrainedModel
from tests.metrics_scrape import scrape, value
from tests.server_process import server_files

CALL_TIMEOUT = 10.0
SWIPES = 200
YEAR = timedelta(days=365)
SEEDED_DAYS = 30

Start = Callable[..., ClockedServer]


@pytest.fixture
def start(trained_model: TrainedModel, tmp_path: Path) -> Iterator[Start]:
    """Start fraud-serve with its clock shifted, its logs and state in tmp_path."""
    servers: list[ClockedServer] = []

    def started(offset: timedelta, **environment: str) -> ClockedServer:
        server = ClockedServer(
            tmp_path / "server",
            "--registry", str(trained_model.registry), "--host", "127.0.0.1",
            "--port", "0", "--metrics-port", "0",
            environment={
                **server_files(tmp_path),
                "FRAUD_LOGGING__SAMPLE_RATE": "0",
                # Model answers whenever the clock allows, however busy the machine.
                "FRAUD_BUDGET__SERVER_BUDGET_MS": "5000",
            } | environment,
            clock_offset_seconds=offset.total_seconds(),
        )  # fmt: skip
        servers.append(server)
        return server

    yield started
    for server in servers:
        server.kill()


def _swipe(number: int, when: datetime) -> scoring_pb2.ScoreRequest:
    return build_score_request(
        f"tx-{number}", f"card-{number % 37}", f"term-{number % 11}", 1_250, "EUR", when
    )


def test_a_server_clock_ten_minutes_behind_refuses_nothing_and_counts_the_skew(
    start: Start, tmp_path: Path
) -> None:
    """Swipes stamped now reach a server ten minutes behind: every one is answered by the
    fallback rules ("clock_skew"), none is INVALID_ARGUMENT, and /metrics counts them with
    their skew; a swipe stamped at the server's own time gets the model's answer, and an
    outcome reported now is accepted and counted."""
    server = start(-timedelta(minutes=10))
    serving = server.wait_for("serving")
    channel = grpc.insecure_channel(f"127.0.0.1:{serving['port']}")
    stub = scoring_pb2_grpc.FraudScoringStub(channel)
    codes: dict[str, int] = {}
    answers = []
    for number in range(SWIPES):
        try:
            answers.append(stub.Score(_swipe(number, datetime.now(UTC)), timeout=CALL_TIMEOUT))
        except grpc.RpcError as error:
            codes[error.code().name] = codes.get(error.code().name, 0) + 1
    in_time = stub.Score(_swipe(SWIPES, datetime.now(UTC) - timedelta(minutes=10)))
    earlier = stub.Score(_swipe(SWIPES + 1, datetime.now(UTC) - timedelta(hours=1)))
    stub.ReportOutcome(build_outcome_request(earlier.transaction_id, True, datetime.now(UTC)))
    metrics = scrape(f"http://127.0.0.1:{serving['metrics_port']}/metrics")
    channel.close()
    assert server.stop() == 0

    assert codes == {}  # no INVALID_ARGUMENT, no error of any kind
    assert {(a.decision_source, a.fallback_reason) for a in answers} == {
        (scoring_pb2.DECISION_SOURCE_FALLBACK, "clock_skew")
    }
    assert in_time.decision_source == earlier.decision_source == scoring_pb2.DECISION_SOURCE_MODEL
    assert value(metrics, "fraud_fallback_total", reason="clock_skew") == SWIPES
    assert value(metrics, "fraud_clock_skew_seconds_count", time="event_time") == SWIPES
    mean_skew = value(metrics, "fraud_clock_skew_seconds_sum", time="event_time") / SWIPES
    assert 590.0 < mean_skew < 610.0
    assert value(metrics, "fraud_clock_skew_seconds_bucket", time="event_time", le="300.0") == 0
    assert value(metrics, "fraud_clock_skew_seconds_count", time="reported_at") == 1
    assert value(metrics, "fraud_outcomes_total", is_fraud="true") == 1
    decisions = [
        json.loads(line)
        for segment in sorted((tmp_path / "decisions").iterdir())
        for line in segment.read_text().splitlines()
    ]
    skewed = [line for line in decisions if line["fallback_reason"] == "clock_skew"]
    assert len(skewed) == SWIPES
    assert all(line["features"] is None for line in skewed)


def _seed(
    directory: Path, kind: RecordKind, now: datetime, line: Callable[[datetime], dict[str, Any]]
) -> list[Path]:
    """A segment a day for the last `SEEDED_DAYS` days, as a server with a right clock
    wrote them: named by their opening, their lines stamped within that day."""
    directory.mkdir()
    seeded = []
    for days in range(SEEDED_DAYS, 0, -1):
        opened = now - timedelta(days=days)
        path = directory / segment_name(kind, opened.timestamp(), 1, 0, "seeded")
        path.write_text(json.dumps(line(opened + timedelta(minutes=5)), default=str) + "\n")
        seeded.append(path)
    return seeded


def test_a_server_clock_a_year_ahead_deletes_no_segment(start: Start, tmp_path: Path) -> None:
    """Thirty days of decision and outcome segments, then a server a year ahead that writes
    and rotates both logs many times (4 KiB segments): every seeded segment is still there,
    and the server says its clock is ahead of the records instead of deleting them."""
    now = datetime.now(UTC)
    seeded = _seed(
        tmp_path / "decisions",
        "decisions",
        now,
        lambda moment: {"transaction_id": "seeded", "event_time": moment.isoformat()},
    )
    seeded += _seed(
        tmp_path / "outcomes",
        "outcomes",
        now,
        lambda moment: {"transaction_id": "seeded", "reported_at": iso_utc(moment.timestamp())},
    )
    server = start(
        YEAR,
        FRAUD_DECISION_LOG__SEGMENT_BYTES="4096",
        FRAUD_OUTCOME_LOG__SEGMENT_BYTES="4096",
    )
    serving = server.wait_for("serving")
    channel = grpc.insecure_channel(f"127.0.0.1:{serving['port']}")
    stub = scoring_pb2_grpc.FraudScoringStub(channel)
    # No deadlines: grpc measures them against time.time, shifted here but not in its core.
    for number in range(60):
        stub.Score(_swipe(number, datetime.now(UTC) - timedelta(minutes=1)))
        stub.ReportOutcome(build_outcome_request(f"tx-{number}", False, datetime.now(UTC)))
    channel.close()
    assert server.stop() == 0

    assert all(path.exists() for path in seeded)
    written = [
        path
        for directory in ("decisions", "outcomes")
        for path in (tmp_path / directory).iterdir()
        if path not in seeded
    ]
    server_year = str((now + YEAR).year)
    assert all(path.name.split("-")[1].startswith(server_year) for path in written)
    events = server.events()
    # Retention ran at start and after each rotation, in both logs, and spared them all.
    assert len(written) >= 4
    assert events.count("record_log_clock_ahead") >= len(written)
    assert "record_log_segment_deleted" not in events
    assert "record_log_budget_short" not in events
