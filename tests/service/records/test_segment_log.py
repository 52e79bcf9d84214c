"""Tests for service.records.segment_log: segments named, rotated and deleted, drops counted, disk
errors survived. Each log writes real files in tmp_path from its real writer thread."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from service.records.schema import host_for_segments, iso_utc, segment_name
from service.records.segment_log import DEFAULT_LIMITS, LogLimits, RecordLog
from tests.process_metrics import sample_value

HOST = host_for_segments(socket.gethostname())  # the writer names its segments so

# 2026-09-01T23:59:59.5Z: half a second before a UTC day ends.
T0 = datetime(2026, 9, 1, 23, 59, 59, 500_000, UTC).timestamp()
DAY = 86_400.0
FAST = 0.01  # seconds between the writer's looks at its queue
WAIT_SECONDS = 30.0  # for the writer thread to catch up, on a busy machine


class Clock:
    """Wall time that moves only when a test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def encode(records: Sequence[str], _written_at: float) -> bytes:
    return "".join(json.dumps({"id": record}) + "\n" for record in records).encode()


def open_log(
    directory: Path,
    limits: LogLimits = DEFAULT_LIMITS,
    clock: Callable[[], float] = time.time,
    encoder: Callable[[Sequence[str], float], bytes] = encode,
    flush_seconds: float = FAST,
) -> RecordLog[str]:
    return RecordLog(
        directory, "decisions", encoder, limits, flush_seconds=flush_seconds, clock=clock
    )


def counted(metric: str, **labels: str) -> float:
    value = sample_value(metric, {"log": "decisions", **labels})
    assert value is not None
    return value


def dropped(reason: str) -> float:
    return counted("fraud_record_log_dropped_total", reason=reason)


def written() -> float:
    return counted("fraud_record_log_written_total")


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "the writer thread did not catch up"
        time.sleep(0.005)


def wait_for_drops(reason: str, total: float) -> None:
    wait_until(lambda: dropped(reason) >= total)


def append_and_wait(log: RecordLog[str], record: str) -> None:
    """Append `record` and return once the writer has written it."""
    before = written()
    log.append(record)
    wait_until(lambda: written() > before)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("decisions-*.jsonl"))


def ids(segment: Path) -> list[str]:
    return [json.loads(line)["id"] for line in segment.read_text().splitlines()]


def make_segment(
    directory: Path, opened_at: float, pid: int, size: int, newest_record: float | None = None
) -> Path:
    """A segment another process wrote: `size` bytes of whole lines, the last a decision of
    event time `newest_record` when given."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / segment_name("decisions", opened_at, pid, 0)
    last = b""
    if newest_record is not None:
        last = json.dumps({"event_time": iso_utc(newest_record)}).encode() + b"\n"
    path.write_bytes(b"x" * (size - len(last) - 1) + b"\n" + last)
    return path


@pytest.fixture
def closing() -> Iterator[list[RecordLog[str]]]:
    """Logs a test opens, closed after it even if it fails."""
    logs: list[RecordLog[str]] = []
    yield logs
    for log in logs:
        log.close()


def test_records_are_lines_of_a_segment_named_by_kind_time_pid_and_seq(tmp_path: Path) -> None:
    """Records become JSON lines, in order, in one segment of a directory created for it,
    named after the UTC time it was opened, this process and its first sequence number."""
    directory = tmp_path / "volume" / "decisions"
    log = open_log(directory, clock=Clock(T0))
    for record in ("a", "b", "c"):
        log.append(record)
    log.close()
    (segment,) = directory.iterdir()
    assert segment.name == f"decisions-20260901T235959500000Z-{HOST}-{os.getpid()}-0.jsonl"
    assert ids(segment) == ["a", "b", "c"]


def test_a_full_segment_is_rotated(tmp_path: Path, closing: list[RecordLog[str]]) -> None:
    """Once a segment holds `segment_bytes`, the next write goes to the next segment."""
    log = open_log(tmp_path, LogLimits(segment_bytes=10))
    closing.append(log)
    append_and_wait(log, "first")
    append_and_wait(log, "second")
    log.close()
    first, second = segments(tmp_path)
    assert first.name.endswith("-0.jsonl")
    assert second.name.endswith("-1.jsonl")
    assert (ids(first), ids(second)) == (["first"], ["second"])


def test_a_new_utc_day_starts_a_new_segment(tmp_path: Path, closing: list[RecordLog[str]]) -> None:
    """A record written after midnight UTC goes to a segment named after the new day."""
    clock = Clock(T0)
    log = open_log(tmp_path, clock=clock)
    closing.append(log)
    append_and_wait(log, "before-midnight")
    clock.now = T0 + 1.0
    append_and_wait(log, "after-midnight")
    log.close()
    first, second = segments(tmp_path)
    assert first.name.startswith("decisions-20260901T235959500000Z-")
    assert second.name.startswith("decisions-20260902T000000500000Z-")
    assert (ids(first), ids(second)) == (["before-midnight"], ["after-midnight"])


def test_retention_at_start_deletes_the_oldest_segments_beyond_the_byte_budget(
    tmp_path: Path,
) -> None:
    """At start the oldest segments of this kind, whatever process wrote them, go until the
    rest fit in `max_bytes`; other kinds and other files stay."""
    oldest = make_segment(tmp_path, T0 - 3 * DAY, pid=1, size=100)
    older = make_segment(tmp_path, T0 - 2 * DAY, pid=2, size=100)
    newer = make_segment(tmp_path, T0 - 1 * DAY, pid=1, size=100)
    other_kind = tmp_path / segment_name("outcomes", T0 - 9 * DAY, 1, 0)
    other_kind.write_text("kept\n")
    stranger = tmp_path / "notes.txt"
    stranger.write_text("kept\n")
    open_log(tmp_path, LogLimits(max_bytes=250), clock=Clock(T0)).close()
    assert not oldest.exists()
    assert sorted(tmp_path.iterdir()) == sorted([older, newer, other_kind, stranger])


def test_a_budget_too_small_for_the_retention_period_is_warned_about(tmp_path: Path) -> None:
    """Deleting for space a segment younger than `retention_days` is a warning with its age;
    deleting an expired one is routine (info)."""
    expired = make_segment(tmp_path, T0 - 181 * DAY, pid=1, size=10)
    young = make_segment(tmp_path, T0 - 3 * DAY, pid=1, size=100)
    make_segment(tmp_path, T0 - 1 * DAY, pid=1, size=100, newest_record=T0)
    with capture_logs() as entries:
        open_log(tmp_path, LogLimits(max_bytes=150), clock=Clock(T0)).close()
    assert not expired.exists()
    assert not young.exists()
    levels = {entry["event"]: entry for entry in entries if "segment" in entry}
    assert levels["record_log_budget_short"]["log_level"] == "warning"
    assert levels["record_log_budget_short"]["segment"] == young.name
    assert levels["record_log_budget_short"]["age_days"] == 3.0
    assert levels["record_log_segment_deleted"]["segment"] == expired.name


def test_retention_deletes_segments_older_than_the_limit(tmp_path: Path) -> None:
    """A segment opened more than `retention_days` (by its name) before the newest record,
    which the clock agrees with, is deleted."""
    expired = make_segment(tmp_path, T0 - 181 * DAY, pid=1, size=10)
    kept = make_segment(tmp_path, T0 - 179 * DAY, pid=1, size=10)
    newest = make_segment(tmp_path, T0 - 0.5 * DAY, pid=1, size=100, newest_record=T0 - 60)
    open_log(tmp_path, LogLimits(retention_days=180), clock=Clock(T0)).close()
    assert segments(tmp_path) == [kept, newest]
    assert not expired.exists()


def test_ages_are_measured_from_the_newest_record_when_the_clock_is_ahead(
    tmp_path: Path,
) -> None:
    """With the wall clock a year ahead of the newest record, no segment is old by the
    records' time: none is deleted, and the log says the clock is ahead."""
    made = [
        make_segment(tmp_path, T0 - days * DAY, pid=1, size=100, newest_record=T0 - days * DAY)
        for days in range(30, -1, -1)
    ]
    with capture_logs() as entries:
        open_log(tmp_path, LogLimits(retention_days=180), clock=Clock(T0 + 365 * DAY)).close()
    assert segments(tmp_path) == made
    (ahead,) = [entry for entry in entries if entry["event"] == "record_log_clock_ahead"]
    assert ahead["log_level"] == "warning"
    assert ahead["wall_clock_ahead_days"] == 365.0
    assert ahead["segments_spared"] == len(made)


def test_a_log_written_under_a_clock_a_year_ahead_deletes_nothing(
    tmp_path: Path, closing: list[RecordLog[str]]
) -> None:
    """The writer itself runs a year ahead: it opens segments named a year ahead and
    rotates, but its records' own times (event times from the terminals) are now, so the
    segments of the days before are not old: none is deleted."""
    made = [
        make_segment(tmp_path, T0 - days * DAY, pid=1, size=100, newest_record=T0 - days * DAY)
        for days in range(10, 0, -1)
    ]
    clock = Clock(T0 + 365 * DAY)

    def decisions(records: Sequence[str], _written_at: float) -> bytes:
        lines = (json.dumps({"id": record, "event_time": iso_utc(T0)}) for record in records)
        return "".join(line + "\n" for line in lines).encode()

    log = open_log(tmp_path, LogLimits(retention_days=180, segment_bytes=4096), clock, decisions)
    closing.append(log)
    for day in range(3):  # three rotations, each followed by retention
        clock.now = T0 + (365 + day) * DAY
        append_and_wait(log, f"day-{day}")
    log.close()
    assert segments(tmp_path)[: len(made)] == made
    assert len(segments(tmp_path)) == len(made) + 3


def test_when_every_clock_jumped_the_age_rule_deletes_only_what_the_budget_needs(
    tmp_path: Path,
) -> None:
    """Records and wall clock both a year ahead: the age rule would delete every segment
    written before the jump. It deletes none of them, only the oldest the byte budget
    requires, and says why."""
    before = [
        make_segment(tmp_path, T0 - days * DAY, pid=1, size=100, newest_record=T0 - days * DAY)
        for days in range(5, -1, -1)
    ]
    year = 365 * DAY
    after = make_segment(tmp_path, T0 + year, pid=2, size=100, newest_record=T0 + year)
    with capture_logs() as entries:
        open_log(tmp_path, LogLimits(max_bytes=650), clock=Clock(T0 + year)).close()
    assert segments(tmp_path) == [*before[1:], after]
    suspended = [entry for entry in entries if entry["event"] == "record_log_age_rule_suspended"]
    assert suspended[0]["newest_expired"] == before[-1].name
    assert suspended[0]["segments_kept"] == len(before)
    assert [entry["event"] for entry in entries if entry.get("segment")] == [
        "record_log_budget_short"
    ]


def test_segments_and_their_directory_are_the_server_s_alone(
    tmp_path: Path, closing: list[RecordLog[str]]
) -> None:
    """The log's directory is created 0700, its segments 0600, whatever the umask allows."""
    directory = tmp_path / "decisions"
    previous = os.umask(0)
    try:
        log = open_log(directory)
        closing.append(log)
        append_and_wait(log, "private")
    finally:
        os.umask(previous)
    log.close()
    assert directory.stat().st_mode & 0o777 == 0o700
    (segment,) = segments(directory)
    assert segment.stat().st_mode & 0o777 == 0o600


def test_retention_after_rotation_spares_the_segment_being_written(
    tmp_path: Path, closing: list[RecordLog[str]]
) -> None:
    """Over budget after a rotation, the other segments go but never the one being written,
    even when a clock stepped back makes it the oldest by name."""
    clock = Clock(T0)
    log = open_log(tmp_path, LogLimits(max_bytes=1), clock=clock)
    closing.append(log)
    append_and_wait(log, "first")
    clock.now = T0 - 2 * DAY  # another day: a rotation
    append_and_wait(log, "second")
    log.close()
    (segment,) = segments(tmp_path)
    assert segment.name.startswith("decisions-20260830T235959500000Z-")
    assert ids(segment) == ["second"]


def test_records_beyond_the_pending_bound_are_dropped_and_counted(tmp_path: Path) -> None:
    """With `max_pending` records waiting, more are dropped as queue_full; the waiting ones
    are written at close."""
    before = dropped("queue_full")
    log = open_log(tmp_path, LogLimits(max_pending=2), flush_seconds=3600)
    for record in ("a", "b", "c", "d", "e"):
        log.append(record)
    assert dropped("queue_full") == before + 3
    log.close()
    (segment,) = segments(tmp_path)
    assert ids(segment) == ["a", "b"]


def test_a_record_after_close_is_dropped_and_counted(tmp_path: Path) -> None:
    """Once closed, the log writes nothing more and counts what it refused as closed."""
    log = open_log(tmp_path)
    log.close()
    before = dropped("closed")
    log.append("late")
    assert dropped("closed") == before + 1
    assert list(tmp_path.iterdir()) == []


def test_a_write_error_drops_and_counts_and_the_log_recovers(
    tmp_path: Path, closing: list[RecordLog[str]]
) -> None:
    """While the directory cannot be created (a file is in its way) records are dropped as
    write_error, reported once; once it can, later records are written again."""
    directory = tmp_path / "decisions"
    directory.write_text("in the way")
    before = dropped("write_error")
    with capture_logs() as entries:
        log = open_log(directory)
        closing.append(log)
        for count, record in enumerate(("lost-1", "lost-2"), start=1):
            log.append(record)
            wait_for_drops("write_error", before + count)
        directory.unlink()
        append_and_wait(log, "kept")
        log.close()
    events = [entry["event"] for entry in entries]
    assert events.count("record_log_write_failed") == 1
    assert "record_log_recovered" in events
    assert dropped("write_error") == before + 2
    (segment,) = segments(directory)
    assert ids(segment) == ["kept"]


def test_an_encoder_failure_drops_its_chunk_and_the_writer_goes_on(
    tmp_path: Path, closing: list[RecordLog[str]]
) -> None:
    """A chunk the encoder cannot encode is dropped as write_error; later ones are written."""

    def strict(records: Sequence[str], written_at: float) -> bytes:
        if "bad" in records:
            raise TypeError("cannot encode")
        return encode(records, written_at)

    before = dropped("write_error")
    log = open_log(tmp_path, encoder=strict)
    closing.append(log)
    log.append("bad")
    wait_for_drops("write_error", before + 1)
    append_and_wait(log, "good")
    log.close()
    (segment,) = segments(tmp_path)
    assert ids(segment) == ["good"]


def test_a_segment_deleted_while_written_is_replaced(
    tmp_path: Path, closing: list[RecordLog[str]]
) -> None:
    """When its segment is deleted under it (another worker's retention), the writer
    starts a fresh one rather than write into a file nobody can read."""
    log = open_log(tmp_path)
    closing.append(log)
    append_and_wait(log, "first")
    segments(tmp_path)[0].unlink()
    append_and_wait(log, "second")
    log.close()
    (segment,) = segments(tmp_path)
    assert segment.name.endswith("-1.jsonl")
    assert ids(segment) == ["second"]


def test_a_restarted_log_writes_a_segment_of_its_own(tmp_path: Path) -> None:
    """A second log on the same directory leaves the first one's segment as it was."""
    for offset, record in enumerate(("before-restart", "after-restart")):
        log = open_log(tmp_path, clock=Clock(T0 + offset))
        log.append(record)
        log.close()
    first, second = segments(tmp_path)
    assert (ids(first), ids(second)) == (["before-restart"], ["after-restart"])
