"""Tests for service.records.outcome_writer: accepted outcomes as JSON lines in "outcomes"
segments."""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.core.domain import Outcome, OutcomeFate
from service.records.outcome_writer import OutcomeLogWriter
from service.records.schema import host_for_segments
from service.records.segment_log import LogLimits
from tests.process_metrics import sample_value

HOST = host_for_segments(socket.gethostname())  # the writer names its segments so

REPORTED_AT = 1_704_067_200.25  # 2024-01-01T00:00:00.25Z
RECEIVED_AT = datetime(2026, 9, 1, 8, 30, 0, 123_456, UTC).timestamp()


def dropped(reason: str) -> float:
    labels = {"log": "outcomes", "reason": reason}
    value = sample_value("fraud_record_log_dropped_total", labels)
    assert value is not None
    return value


def lines(segment: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in segment.read_text().splitlines()]


def test_recorded_outcomes_are_json_lines_after_close(tmp_path: Path) -> None:
    """Each outcome becomes one JSON line, as reported and when received, in a segment of
    kind "outcomes" in a directory created for it."""
    directory = tmp_path / "volume" / "outcomes"
    log = OutcomeLogWriter(directory, clock=lambda: RECEIVED_AT)
    log.record("tx-1", True, REPORTED_AT)
    log.record("tx-2", False, REPORTED_AT + 60, "chargebacks", 3)
    log.close()

    (segment,) = directory.iterdir()
    assert segment.name == f"outcomes-20260901T083000123456Z-{HOST}-{os.getpid()}-0.jsonl"
    assert lines(segment) == [
        {
            "transaction_id": "tx-1",
            "is_fraud": True,
            "reported_at": "2024-01-01T00:00:00.250000+00:00",
            "received_at": "2026-09-01T08:30:00.123456+00:00",
            "caller": "",
            "caller_rank": 0,
        },
        {
            "transaction_id": "tx-2",
            "is_fraud": False,
            "reported_at": "2024-01-01T00:01:00.250000+00:00",
            "received_at": "2026-09-01T08:30:00.123456+00:00",
            "caller": "chargebacks",
            "caller_rank": 3,
        },
    ]


def test_as_a_listener_it_logs_the_outcomes_of_held_transactions_only(tmp_path: Path) -> None:
    """Heard from the scorer, an outcome is logged, with its rank, when the feature state
    holds its transaction, whatever it did to the label (counted, outranked, too late to
    count); one the state does not hold, or could not look up, is left to the quarantine."""
    log = OutcomeLogWriter(tmp_path, clock=lambda: RECEIVED_AT)
    for fate in OutcomeFate:
        log.on_outcome(Outcome(fate.name, True, REPORTED_AT), fate, fate.value)
    log.close()
    (segment,) = tmp_path.iterdir()
    assert [(line["transaction_id"], line["caller_rank"]) for line in lines(segment)] == [
        ("COUNTED", 1),
        ("OUTRANKED", 2),
        ("TOO_LATE", 3),
    ]


def test_outcome_drops_are_counted_as_the_outcome_log_s(tmp_path: Path) -> None:
    """Outcomes beyond the pending bound are counted under log="outcomes"; recording never
    raises."""
    before = dropped("queue_full")
    log = OutcomeLogWriter(tmp_path, LogLimits(max_pending=1), flush_seconds=3600)
    log.record("kept", True, REPORTED_AT)
    log.record("dropped", True, REPORTED_AT)
    assert dropped("queue_full") == before + 1
    log.close()
    (segment,) = tmp_path.iterdir()
    assert [record["transaction_id"] for record in lines(segment)] == ["kept"]


def test_a_disk_error_drops_and_counts_without_raising(tmp_path: Path) -> None:
    """When the directory cannot be created (a file is in the way), the outcomes are
    counted as write errors; recording and closing raise nothing."""
    blocked = tmp_path / "outcomes"
    blocked.write_text("not a directory")
    before = dropped("write_error")
    log = OutcomeLogWriter(blocked)
    for number in range(3):
        log.record(f"tx-{number}", True, REPORTED_AT)
    log.close()
    assert dropped("write_error") == before + 3
    assert blocked.read_text() == "not a directory"
