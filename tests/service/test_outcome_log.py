"""Tests for service.outcome_log: accepted outcomes appended to daily JSON-lines files."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from service.outcome_log import OutcomeLog

REPORTED_AT = 1_704_067_200.25  # 2024-01-01T00:00:00.25Z
# Far more than a queue of one can hold while the writer waits: some must be dropped.
RECORDS = 100


def _dropped() -> float:
    value = REGISTRY.get_sample_value("fraud_outcome_log_dropped_total")
    assert value is not None
    return value


def _segment(directory: Path) -> Path:
    """Today's segment: outcomes are filed by the UTC day they were received."""
    return directory / f"outcomes-{datetime.now(UTC).date().isoformat()}.jsonl"


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_recorded_outcomes_are_json_lines_after_close(tmp_path: Path) -> None:
    """Each outcome becomes one JSON line in today's segment, in a directory created for it."""
    directory = tmp_path / "volume" / "outcomes"
    before = datetime.now(UTC)
    log = OutcomeLog(directory)
    log.record("tx-1", True, REPORTED_AT)
    log.record("tx-2", False, REPORTED_AT + 60)
    log.close()

    segments = list(directory.iterdir())
    assert len(segments) == 1
    assert segments[0].name.startswith("outcomes-")
    first, second = _lines(segments[0].read_text())
    assert first["transaction_id"] == "tx-1"
    assert first["is_fraud"] is True
    assert first["reported_at"] == "2024-01-01T00:00:00.250000+00:00"
    assert datetime.fromisoformat(first["received_at"]) >= before.replace(microsecond=0)
    assert (second["transaction_id"], second["is_fraud"]) == ("tx-2", False)
    assert second["reported_at"] == "2024-01-01T00:01:00.250000+00:00"


def test_a_second_log_appends_to_the_same_segment(tmp_path: Path) -> None:
    """A restarted server keeps the lines already written and adds its own after them."""
    for transaction_id in ("before-restart", "after-restart"):
        log = OutcomeLog(tmp_path)
        log.record(transaction_id, True, REPORTED_AT)
        log.close()
    records = _lines(_segment(tmp_path).read_text())
    assert [record["transaction_id"] for record in records] == ["before-restart", "after-restart"]


def test_a_disk_error_drops_and_counts_without_raising(tmp_path: Path) -> None:
    """When the directory cannot be created (a file is in the way), records are counted
    as dropped; recording and closing raise nothing."""
    blocked = tmp_path / "outcomes"
    blocked.write_text("not a directory")
    dropped = _dropped()
    log = OutcomeLog(blocked)
    for number in range(3):
        log.record(f"tx-{number}", True, REPORTED_AT)
    log.close()
    assert _dropped() == dropped + 3
    assert blocked.read_text() == "not a directory"


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    """With the writer stuck on its file, records beyond the queue's room are dropped and
    counted; each record is either written or counted."""
    fifo = _segment(tmp_path)
    os.mkfifo(fifo)  # opening it for writing blocks until the test reads it
    dropped = _dropped()
    log = OutcomeLog(tmp_path, max_pending=1)
    for number in range(RECORDS):
        log.record(f"tx-{number}", True, REPORTED_AT)
    assert _dropped() > dropped
    with fifo.open("rb") as reader:  # unblocks the writer
        log.close()
        written = _lines(reader.read().decode())
    assert len(written) + (_dropped() - dropped) == RECORDS
    assert written[0]["transaction_id"] == "tx-0"


def test_a_record_after_close_is_dropped(tmp_path: Path) -> None:
    """Once closed, the log writes nothing more and counts what it refused."""
    log = OutcomeLog(tmp_path)
    log.close()
    dropped = _dropped()
    log.record("late", True, REPORTED_AT)
    assert _dropped() == dropped + 1
    assert list(tmp_path.iterdir()) == []
