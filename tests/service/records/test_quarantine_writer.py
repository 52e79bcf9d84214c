"""Tests for service.records.quarantine_writer: outcomes of transactions the feature state
does not hold, in "quarantine" segments beside the outcome log's, within a budget of their
own."""

from __future__ import annotations

import contextvars
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.core.callers import CURRENT_CALLER
from service.core.domain import Outcome, OutcomeFate
from service.records.outcome_writer import OutcomeLogWriter
from service.records.quarantine_writer import QuarantineWriter
from service.records.schema import QUARANTINE_SCHEMA, is_segment
from service.records.segment_log import LogLimits

REPORTED_AT = 1_704_067_200.25  # 2024-01-01T00:00:00.25Z
RECEIVED_AT = datetime(2026, 9, 1, 8, 30, 0, 123_456, UTC).timestamp()
LIMITS = LogLimits(max_bytes=1 << 20, segment_bytes=4096)


def lines(directory: Path, kind: str) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for segment in sorted(directory.glob(f"{kind}-*.jsonl"))
        for line in segment.read_text().splitlines()
    ]


def test_it_keeps_what_the_outcome_log_does_not_with_why(tmp_path: Path) -> None:
    """Beside the outcome log, in its directory: an unknown transaction's outcome and one
    the state could not look up are quarantined, with the caller, its rank and the reason;
    the held ones go to the outcome log alone."""
    outcomes = OutcomeLogWriter(tmp_path, clock=lambda: RECEIVED_AT)
    quarantine = QuarantineWriter(tmp_path, LIMITS, clock=lambda: RECEIVED_AT)

    def report() -> None:
        CURRENT_CALLER.set("portal")
        for fate in OutcomeFate:
            for listener in (outcomes, quarantine):
                listener.on_outcome(Outcome(fate.name, False, REPORTED_AT), fate, 1)

    contextvars.copy_context().run(report)
    outcomes.close()
    quarantine.close()

    kept = lines(tmp_path, "quarantine")
    assert kept == [
        {
            "transaction_id": "NOT_HELD",
            "is_fraud": False,
            "reported_at": "2024-01-01T00:00:00.250000+00:00",
            "received_at": "2026-09-01T08:30:00.123456+00:00",
            "caller": "portal",
            "caller_rank": 1,
            "reason": "unknown_transaction",
        },
        {
            "transaction_id": "STATE_UNAVAILABLE",
            "is_fraud": False,
            "reported_at": "2024-01-01T00:00:00.250000+00:00",
            "received_at": "2026-09-01T08:30:00.123456+00:00",
            "caller": "portal",
            "caller_rank": 1,
            "reason": "state_unavailable",
        },
    ]
    assert all(tuple(line) == QUARANTINE_SCHEMA.names for line in kept)
    assert [line["transaction_id"] for line in lines(tmp_path, "outcomes")] == [
        "COUNTED",
        "OUTRANKED",
        "TOO_LATE",
    ]
    assert all(
        is_segment(path.name, "quarantine") or is_segment(path.name, "outcomes")
        for path in tmp_path.iterdir()
    )


def test_its_retention_deletes_its_own_segments_never_the_outcome_log_s(tmp_path: Path) -> None:
    """A quarantine over its small budget deletes its oldest segments; the outcome log's
    segment in the same directory, older than all of them, stays whole."""
    outcomes = OutcomeLogWriter(tmp_path, clock=lambda: RECEIVED_AT)
    outcomes.on_outcome(Outcome("genuine", True, REPORTED_AT), OutcomeFate.COUNTED, 0)
    outcomes.close()
    budget = LogLimits(max_bytes=8192, segment_bytes=4096)
    for batch in range(10):  # a writer per batch: each opens a segment and applies retention
        quarantine = QuarantineWriter(tmp_path, budget, clock=lambda: RECEIVED_AT)
        for number in range(30):
            made_up = Outcome(f"made-up-{batch}-{number}", True, REPORTED_AT)
            quarantine.on_outcome(made_up, OutcomeFate.NOT_HELD, 0)
        quarantine.close()
    segments = list(tmp_path.glob("quarantine-*.jsonl"))
    assert sum(segment.stat().st_size for segment in segments) <= 8192 + 4096 + 32 * 256
    assert len(lines(tmp_path, "quarantine")) < 300
    assert lines(tmp_path, "outcomes")[0]["transaction_id"] == "genuine"
