"""An append-only log of accepted outcomes, kept for retraining, written off the request path.

    Scorer.report_outcome → OutcomeLog.record: a non-blocking put on a bounded queue
    → writer thread: drain the queue → one append per daily segment → fsync at least every second

Each line of `outcomes-YYYY-MM-DD.jsonl` (the UTC day the server received the outcome) is
one JSON object: `transaction_id`, `is_fraud`, `reported_at` and `received_at`, both ISO 8601
in UTC. Outcomes carry no card data, so none reaches these files.

The log never slows down or fails a request: when the queue is full (the disk is stalled or
slower than the traffic) a record is dropped, and a disk error drops the batch being written.
Both count in `fraud_outcome_log_dropped_total` and are logged at most once a minute. Each
batch goes to its segment in one `O_APPEND` write, so several worker processes can share a
directory without interleaving their lines.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import threading
import time
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import BinaryIO, NamedTuple

import structlog

from service.metrics import OUTCOME_LOG_DROPPED

SYNC_SECONDS = 1.0
WARNING_SECONDS = 60.0
DEFAULT_CLOSE_SECONDS = 5.0

_log = structlog.get_logger(__name__)


class _Record(NamedTuple):
    transaction_id: str
    is_fraud: bool
    reported_at: float
    received_at: float


class _Throttle:
    """Says yes at most once per `interval` seconds; counts the events it silenced."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0
        self.silenced = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            self.silenced += 1
            return False
        self._next = now + self._interval
        return True


class OutcomeLog:
    """Durable JSON-lines log of accepted outcomes, written by its own daemon thread."""

    def __init__(self, directory: Path, *, max_pending: int = 10_000) -> None:
        """Log into `directory` (created when first written to), holding at most
        `max_pending` records in memory while the writer catches up."""
        self._directory = directory
        # None wakes the writer up on close.
        self._pending: queue.Queue[_Record | None] = queue.Queue(maxsize=max_pending)
        self._closing = threading.Event()
        self._drop_warnings = _Throttle(WARNING_SECONDS)
        self._writer = _SegmentWriter(directory)
        self._thread = threading.Thread(target=self._run, name="outcome-log", daemon=True)
        self._thread.start()

    def record(self, transaction_id: str, is_fraud: bool, reported_at: float) -> None:
        """Queue one accepted outcome (`reported_at` in Unix seconds); never blocks or raises.

        Dropped and counted when the queue is full or the log is closed.
        """
        if self._closing.is_set():
            self._drop()
            return
        try:
            self._pending.put_nowait(_Record(transaction_id, is_fraud, reported_at, time.time()))
        except queue.Full:
            self._drop()

    def close(self, timeout: float = DEFAULT_CLOSE_SECONDS) -> None:
        """Write what is queued, sync it and stop the writer, waiting at most `timeout`."""
        self._closing.set()
        # Wakes a waiting writer; a writer with a full queue is not waiting, and sees the flag.
        with contextlib.suppress(queue.Full):
            self._pending.put_nowait(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            _log.warning("outcome_log_not_drained", directory=str(self._directory))

    def _drop(self) -> None:
        OUTCOME_LOG_DROPPED.inc()
        if self._drop_warnings.ready():
            _log.warning(
                "outcome_log_dropped",
                reason="closed" if self._closing.is_set() else "queue_full",
                dropped_since_last_warning=self._drop_warnings.silenced + 1,
                max_pending=self._pending.maxsize,
            )
            self._drop_warnings.silenced = 0

    def _run(self) -> None:
        while not (self._closing.is_set() and self._pending.empty()):
            batch = self._next_batch(self._writer.seconds_to_sync())
            if batch:
                self._writer.append(batch)
            self._writer.sync_if_due()
        self._writer.close()

    def _next_batch(self, wait: float | None) -> list[_Record]:
        """Everything queued, after waiting up to `wait` seconds (None: forever) for one."""
        try:
            first = self._pending.get(timeout=wait)
        except queue.Empty:
            return []
        batch = [first]
        while True:
            try:
                batch.append(self._pending.get_nowait())
            except queue.Empty:
                return [record for record in batch if record is not None]


class _SegmentWriter:
    """Appends records to daily segment files; owned by the writer thread alone."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._file: BinaryIO | None = None
        self._day: date | None = None
        self._unsynced = False
        self._synced_at = time.monotonic()
        self._errors = _Throttle(WARNING_SECONDS)

    def append(self, batch: list[_Record]) -> None:
        """Write `batch`, one append per day it spans; a failed day's records are dropped."""
        for day, records in itertools.groupby(batch, key=_day_received):
            lines = list(records)
            try:
                _write_all(self._segment(day), _encode(lines))
            except OSError as error:
                self._fail(len(lines), error)
            else:
                self._unsynced = True

    def seconds_to_sync(self) -> float | None:
        """How long the writer may wait for records before it must sync; None: no limit."""
        if not self._unsynced:
            return None
        return max(0.0, self._synced_at + SYNC_SECONDS - time.monotonic())

    def sync_if_due(self) -> None:
        """fsync what was written if the last sync is a second old or more."""
        if self.seconds_to_sync() == 0.0:
            self._sync()

    def close(self) -> None:
        """Sync and close the open segment."""
        self._sync()
        self._close_file()

    def _segment(self, day: date) -> BinaryIO:
        if self._file is None or day != self._day:
            self._sync()
            self._close_file()
            self._directory.mkdir(parents=True, exist_ok=True)
            # Unbuffered: each batch is one write() of whole lines, appended atomically.
            self._file = (self._directory / f"outcomes-{day.isoformat()}.jsonl").open(
                "ab", buffering=0
            )
            self._day = day
        return self._file

    def _sync(self) -> None:
        if self._file is not None and self._unsynced:
            try:
                os.fsync(self._file.fileno())
            except OSError as error:
                self._fail(0, error)
        self._unsynced = False
        self._synced_at = time.monotonic()

    def _close_file(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as error:
                self._fail(0, error)

    def _fail(self, dropped: int, error: OSError) -> None:
        """Count `dropped` records and start on a fresh file next time (the disk may heal)."""
        OUTCOME_LOG_DROPPED.inc(dropped)
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                file.close()
        if self._errors.ready():
            _log.error(
                "outcome_log_write_failed",
                directory=str(self._directory),
                error=str(error),
                dropped=dropped,
                errors_since_last_report=self._errors.silenced + 1,
            )
            self._errors.silenced = 0


def _day_received(record: _Record) -> date:
    return datetime.fromtimestamp(record.received_at, UTC).date()


def _encode(records: Iterable[_Record]) -> bytes:
    return "".join(
        json.dumps(
            {
                "transaction_id": record.transaction_id,
                "is_fraud": record.is_fraud,
                "reported_at": _iso(record.reported_at),
                "received_at": _iso(record.received_at),
            }
        )
        + "\n"
        for record in records
    ).encode()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


def _write_all(file: BinaryIO, data: bytes) -> None:
    """Write all of `data`; a regular file takes it in one call, the loop covers the rest."""
    view = memoryview(data)
    while view:
        view = view[file.write(view) :]
