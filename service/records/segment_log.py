"""An append-only JSON-lines log written off the request path, by its own daemon thread.

    request thread: RecordLog.append → a length check and a tuple onto a deque, nothing else
    → writer thread, every `flush_seconds`: the pending records, CHUNK_RECORDS at a time,
      encoded by the concrete log's encoder and appended in one `O_APPEND` write each
    → fsync at least every second; a segment rotated at `segment_bytes` or when the UTC
      day changes, then the oldest segments deleted beyond `max_bytes` or `retention_days`

Segments are named by `service.records.schema` (`segment_name`): the UTC wall time the
segment was opened, so names sort by time, then the writing host and process and its count
of segments, so that worker processes sharing a directory, and replicas sharing a volume,
never write to the same file.

The log never slows down or fails a request. With `max_pending` records waiting (the disk is
stalled or slower than the traffic) or once closed, a record is dropped; a disk error drops
the chunk being written. Drops count in `fraud_record_log_dropped_total{log, reason}` and are
logged at most once a minute. After a disk error the next chunk goes to a fresh segment, as
the failed one may end in a torn line (readers skip it); a segment still empty is kept, so a
disk that stays full costs no new file per chunk.

Retention runs when the writer starts and after each rotation. It deletes this kind's
oldest segments of every process while their total exceeds `max_bytes` or while one is
older than `retention_days` by the time in its name, never the segment it is writing. It
cannot tell which segment another worker is writing: with a budget many segments deep it
only ever reaches old ones, and a writer whose segment was deleted under it starts a fresh
one at its next write.

Ages are not measured from the wall clock alone, which can jump: a server clock set a year
ahead would otherwise delete every segment at once. They are measured from the earlier of
the wall clock and the newest record's own time (a decision's event time, from the
terminal's clock; an outcome's report time, from the reporter's), the latest of those in
the tail of the newest segment holding any (the newest segment's name when none does). A
wall clock ahead of the records spares segments, and says so (`record_log_clock_ahead`).
Should both clocks have jumped, the age rule would delete every segment written before a
gap longer than the retention period: it deletes none of them then, only what the byte
budget requires, and says so (`record_log_age_rule_suspended`) until an operator deletes
them (a server idle for longer than the retention period looks alike).

Files are created readable and writable by the server's user alone (0600), in directories
it alone may enter (0700): the records hold no card number, but they do hold every
transaction's amounts, terminals and merchants.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Generic, Literal, NamedTuple, TypeVar, get_args

import orjson
import structlog

from service.config.settings import GIB, MIB
from service.observability.logs import Throttle
from service.observability.metrics import (
    RECORD_LOG_DROPPED,
    RECORD_LOG_WRITTEN,
)
from service.records.schema import (
    RECORD_KINDS,
    RecordKind,
    host_for_segments,
    segment_name,
    segment_of_twin,
    segment_opened_at,
    twin_of,
)

T = TypeVar("T")
# Encodes a chunk of records, given the wall time (Unix seconds) of writing, as JSON lines.
ChunkEncoder = Callable[[Sequence[T], float], bytes]

FLUSH_SECONDS = 0.2
SYNC_SECONDS = 1.0
WARNING_SECONDS = 60.0
CLOSE_SECONDS = 5.0
# Records encoded per write. The writer holds the GIL while it encodes a chunk, so a
# request may wait as long as one chunk takes to encode: chunks are kept small.
CHUNK_RECORDS = 32
# Rest between two chunks, GIL released: with sleep(0), a writer with a backlog would ask
# for the GIL back at once, chunk after chunk, and take turns with the request thread for
# as long as the backlog lasts. Resting bounds its share of the GIL and still writes a
# chunk a millisecond, far above any serving rate.
REST_SECONDS = 0.001
SECONDS_PER_DAY = 86_400
FILE_MODE = 0o600
DIRECTORY_MODE = 0o700
# The time in each kind's lines that does not come from this server's clock.
RECORD_TIME_FIELDS: dict[RecordKind, str] = {
    "decisions": "event_time",
    "outcomes": "reported_at",
    "quarantine": "reported_at",
}
# How much of a segment's end is read for its newest record time: some dozens of lines.
_TAIL_BYTES = 64 * 1024
# Segments read, newest first, for a record time before falling back to their names.
_SEGMENTS_READ_FOR_TIME = 4
# Byte units of the limits below.
# Why a record was not written: the label of `fraud_record_log_dropped_total`.
RecordLogDropReason = Literal["queue_full", "write_error", "closed"]
RECORD_LOG_DROP_REASONS: tuple[RecordLogDropReason, ...] = get_args(RecordLogDropReason)

_log = structlog.get_logger(__name__)

# Every (log, reason) series exists from import at 0, even a switched-off log's, so alert
# rules see a rise from 0.
for _kind in RECORD_KINDS:
    RECORD_LOG_WRITTEN.labels(_kind)
    for _reason in RECORD_LOG_DROP_REASONS:
        RECORD_LOG_DROPPED.labels(_kind, _reason)


@dataclass(frozen=True, slots=True)
class LogLimits:
    """How much a record log keeps: on disk, per segment, and in memory while writing."""

    max_bytes: int = 16 * GIB
    retention_days: float = 180.0
    segment_bytes: int = 64 * MIB
    max_pending: int = 100_000


DEFAULT_LIMITS = LogLimits()


class RecordLog(Generic[T]):
    """Appends records to rotated JSON-lines segments from a daemon thread of its own.

    A concrete log subclasses it with a typed `record` method that queues a tuple through
    `append`, or, on the hot path, inlines `append`'s three lines.
    """

    def __init__(
        self,
        directory: Path,
        kind: RecordKind,
        encode: ChunkEncoder[T],
        limits: LogLimits = DEFAULT_LIMITS,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Log `kind` records into `directory` (created when first written to), encoded by
        `encode`, written every `flush_seconds`; `clock` gives the wall time."""
        self.directory = directory
        self._kind = kind
        self._encode = encode
        self._clock = clock
        self._flush_seconds = flush_seconds
        self._max_pending = limits.max_pending
        self._pending: deque[T] = deque()
        self._room = limits.max_pending  # 0 once closed: `append` needs no second check
        self._closing = threading.Event()
        self._dropped = {
            reason: RECORD_LOG_DROPPED.labels(kind, reason) for reason in RECORD_LOG_DROP_REASONS
        }
        self._written = RECORD_LOG_WRITTEN.labels(kind)
        self._drop_warnings = Throttle(WARNING_SECONDS)
        self._failures = Throttle(WARNING_SECONDS)
        self._failing = False
        self._segments = _Segments(directory, kind, limits, clock)
        self._thread = threading.Thread(target=self._run, name=f"{kind}-log", daemon=True)
        self._thread.start()

    def append(self, record: T) -> None:
        """Queue `record`; never blocks or raises. Dropped and counted when `max_pending`
        records are waiting already or the log is closed."""
        if len(self._pending) < self._room:
            self._pending.append(record)
        else:
            self._drop()

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Write what is queued, sync it and stop the writer, waiting at most `timeout`.

        Records appended from now on are dropped: call it once the last one is appended.
        """
        self._room = 0
        self._closing.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            _log.warning(
                "record_log_not_drained",
                log=self._kind,
                directory=str(self.directory),
                pending=len(self._pending),
            )

    def _drop(self) -> None:
        reason: RecordLogDropReason = "closed" if self._closing.is_set() else "queue_full"
        self._dropped[reason].inc()
        if self._drop_warnings.ready():
            _log.warning(
                "record_log_dropped",
                log=self._kind,
                reason=reason,
                dropped_since_last_warning=self._drop_warnings.take_silenced() + 1,
                max_pending=self._max_pending,
            )

    def _run(self) -> None:
        self._segments.apply_retention()
        while True:
            wait = min(self._flush_seconds, self._segments.seconds_to_sync())
            closing = self._closing.wait(wait)
            self._write_pending()
            self._guarded(self._segments.sync_if_due)
            if closing:
                break
        self._guarded(self._segments.close)

    def _write_pending(self) -> None:
        pending = self._pending
        while pending:
            chunk = [pending.popleft() for _ in range(min(CHUNK_RECORDS, len(pending)))]
            if self._guarded(functools.partial(self._write_chunk, chunk)):
                self._written.inc(len(chunk))
            else:
                self._dropped["write_error"].inc(len(chunk))
            if not self._closing.is_set():  # closing: the requests have stopped
                time.sleep(REST_SECONDS)

    def _write_chunk(self, chunk: list[T]) -> None:
        self._segments.append(self._encode(chunk, self._clock()))

    def _guarded(self, step: Callable[[], None]) -> bool:
        """Run `step`; report a failure (rate-limited) and say whether it succeeded."""
        try:
            step()
        except Exception as error:
            # OSError: the disk. Anything else is a bug of the encoder, which must not end
            # the writer: the records it was given are dropped all the same.
            self._failing = True
            if self._failures.ready():
                _log.error(
                    "record_log_write_failed",
                    log=self._kind,
                    directory=str(self.directory),
                    error=str(error),
                    failures_since_last_report=self._failures.take_silenced() + 1,
                    exc_info=not isinstance(error, OSError),
                )
            return False
        if self._failing:
            self._failing = False
            _log.info("record_log_recovered", log=self._kind, directory=str(self.directory))
        return True


class _Segment(NamedTuple):
    opened_at: float
    path: Path
    size: int
    twin_size: int = 0
    """Its Parquet twin's size, when it has one: both count, and go together."""

    @property
    def disk_bytes(self) -> int:
        return self.size + self.twin_size


class _Segments:
    """The segment being written, its rotation, and the deletion of old ones.

    Owned by the writer thread alone. Methods raise OSError on a disk error, after which
    the next append goes to a fresh segment.
    """

    def __init__(
        self, directory: Path, kind: RecordKind, limits: LogLimits, clock: Callable[[], float]
    ) -> None:
        self._directory = directory
        self._kind = kind
        self._limits = limits
        self._clock = clock
        self._pid = os.getpid()
        self._host = host_for_segments(socket.gethostname())
        self._seq = itertools.count()
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._day = 0
        self._size = 0
        self._unsynced = False
        self._synced_at = time.monotonic()
        self._now = 0.0  # what retention measured ages from, last time it ran

    def append(self, data: bytes) -> None:
        """Append whole lines in one write, to a new segment if this one is done."""
        file = self._current()
        try:
            _write_all(file, data)
        except OSError:
            self._after_failure()
            raise
        self._size += len(data)
        self._unsynced = True

    def seconds_to_sync(self) -> float:
        """How long the writer may wait before it must sync (infinite: nothing to sync)."""
        if not self._unsynced:
            return float("inf")
        return max(0.0, self._synced_at + SYNC_SECONDS - time.monotonic())

    def sync_if_due(self) -> None:
        """fsync what was written if the last sync is a second old or more."""
        if self.seconds_to_sync() == 0.0:
            self._sync()

    def close(self) -> None:
        """Sync and close the open segment."""
        self._sync()
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def apply_retention(self) -> None:
        """Delete the oldest segments beyond the byte budget or the age limit."""
        try:
            self._delete_old_segments()
        except OSError as error:  # a failed clean-up costs disk space, not records
            _log.warning("record_log_retention_failed", log=self._kind, error=str(error))

    def _current(self) -> BinaryIO:
        now = self._clock()
        file = self._file
        if file is None:
            return self._open(now)
        if (
            self._size >= self._limits.segment_bytes
            or int(now // SECONDS_PER_DAY) != self._day
            or os.fstat(file.fileno()).st_nlink == 0  # deleted under us
        ):
            self.close()
            file = self._open(now)
            self.apply_retention()
        return file

    def _open(self, now: float) -> BinaryIO:
        # An existing directory keeps its mode: it may be a volume the operator set up.
        self._directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        path = self._directory / segment_name(
            self._kind, now, self._pid, next(self._seq), self._host
        )
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        # Unbuffered: each chunk is one write() of whole lines, appended atomically.
        self._file = os.fdopen(descriptor, "ab", buffering=0)
        self._path = path
        self._day = int(now // SECONDS_PER_DAY)
        self._size = 0
        return self._file

    def _sync(self) -> None:
        if self._file is not None and self._unsynced:
            try:
                os.fsync(self._file.fileno())
            except OSError:
                self._after_failure()
                raise
        self._unsynced = False
        self._synced_at = time.monotonic()

    def _after_failure(self) -> None:
        """Give up the segment, unless it is still empty: nothing can be torn in it."""
        file = self._file
        if file is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(file.fileno()).st_size == 0:
                return
        self._file = None
        self._unsynced = False
        with contextlib.suppress(OSError):
            file.close()

    def _delete_old_segments(self) -> None:
        segments = sorted(self._listing())
        if not segments:
            return
        total = sum(segment.disk_bytes for segment in segments)
        oldest_kept = self._oldest_kept(segments)
        for segment in segments:
            if total <= self._limits.max_bytes and segment.opened_at >= oldest_kept:
                return  # the rest are newer still
            if self._file is not None and segment.path == self._path:
                continue
            segment.path.unlink(missing_ok=True)  # another worker may have deleted it
            _twin(segment.path).unlink(missing_ok=True)
            total -= segment.disk_bytes
            if segment.opened_at >= oldest_kept:
                # Retraining may need what goes here: the operator should know, and size up.
                _log.warning(
                    "record_log_budget_short",
                    log=self._kind,
                    segment=segment.path.name,
                    age_days=round((self._now - segment.opened_at) / SECONDS_PER_DAY, 2),
                    retention_days=self._limits.retention_days,
                    max_bytes=self._limits.max_bytes,
                )
            else:
                _log.info("record_log_segment_deleted", log=self._kind, segment=segment.path.name)

    def _oldest_kept(self, segments: list[_Segment]) -> float:
        """The opening time before which the age rule deletes `segments` (sorted, not
        empty); sets `_now`, the time ages are measured from."""
        wall = self._clock()
        retention = self._limits.retention_days * SECONDS_PER_DAY
        newest = _newest_record_time(segments, RECORD_TIME_FIELDS[self._kind])
        self._now = min(wall, segments[-1].opened_at if newest is None else newest)
        oldest_kept = self._now - retention
        expired = sum(1 for segment in segments if segment.opened_at < oldest_kept)
        by_wall = sum(1 for segment in segments if segment.opened_at < wall - retention)
        if by_wall > expired:
            _log.warning(
                "record_log_clock_ahead",
                log=self._kind,
                wall_clock_ahead_days=round((wall - self._now) / SECONDS_PER_DAY, 2),
                segments_spared=by_wall - expired,
            )
        if not expired:
            return oldest_kept
        if expired < len(segments):
            gap = segments[expired].opened_at - segments[expired - 1].opened_at
            if gap <= retention:
                return oldest_kept
        _log.warning(
            "record_log_age_rule_suspended",
            log=self._kind,
            reason="every segment before a gap longer than the retention period would go: "
            "a clock that jumped, or a log idle that long; delete them by hand if the time "
            "is right",
            newest_expired=segments[expired - 1].path.name,
            segments_kept=expired,
            retention_days=self._limits.retention_days,
        )
        return -math.inf

    def _listing(self) -> list[_Segment]:
        """This kind's segments in the directory, with their opening times and sizes (their
        twins' included). A twin whose segment is gone (deleted by a server that did not
        know twins, or just before the twin was written) is deleted here."""
        segments: dict[str, _Segment] = {}
        twins: dict[str, os.DirEntry[str]] = {}
        with contextlib.suppress(FileNotFoundError), os.scandir(self._directory) as entries:
            for entry in entries:
                twin_of = segment_of_twin(entry.name, self._kind)
                if twin_of is not None:
                    twins[twin_of] = entry
                opened_at = segment_opened_at(entry.name, self._kind)
                if opened_at is None:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    size = entry.stat().st_size
                    segments[entry.name] = _Segment(opened_at, Path(entry.path), size)
        for name, twin in twins.items():
            segment = segments.get(name)
            if segment is None:
                Path(twin.path).unlink(missing_ok=True)
                continue
            with contextlib.suppress(FileNotFoundError):
                segments[name] = segment._replace(twin_size=twin.stat().st_size)
        return list(segments.values())


def _twin(segment: Path) -> Path:
    return segment.with_name(twin_of(segment.name))


def _newest_record_time(segments: list[_Segment], field: str) -> float | None:
    """The latest `field` time in the tail of the newest of `segments` (sorted) holding
    any; None when none of the last few does."""
    for segment in reversed(segments[-_SEGMENTS_READ_FOR_TIME:]):
        if segment.size == 0:
            continue
        with contextlib.suppress(FileNotFoundError), segment.path.open("rb") as file:
            file.seek(max(0, segment.size - _TAIL_BYTES))
            lines = file.read(_TAIL_BYTES).split(b"\n")
            if segment.size > _TAIL_BYTES:
                lines = lines[1:]  # cut short by the seek
            times = [moment for line in lines if (moment := _record_time(line, field)) is not None]
            if times:
                return max(times)
    return None


def _record_time(line: bytes, field: str) -> float | None:
    """The time `field` of the JSON line `line`, in Unix seconds; None when it has none."""
    try:
        value = orjson.loads(line)[field]
        moment = datetime.fromisoformat(value)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _write_all(file: BinaryIO, data: bytes) -> None:
    """Write all of `data`; a regular file takes it in one call, the loop covers the rest."""
    view = memoryview(data)
    while view:
        view = view[file.write(view) :]
