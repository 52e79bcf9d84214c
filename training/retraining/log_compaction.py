"""`fraud-train logs compact`: a Parquet twin (`training.retraining.segment_twins`) for every
closed segment of the decision and outcome logs that has none yet, so that retraining reads
columns instead of parsing JSON lines.

A segment is closed when its writer (host and process, from its name) has opened a later
one, or when the UTC day it was opened ended `CLOSED_AFTER_SECONDS` ago: the server rotates
at the first write of a new day, and never writes to a segment again once it has rotated
(a restart writes a new segment). The margin covers clocks that disagree between the
servers and the host compacting. A segment read as closed that grows after all only costs
its twin: readers check the size the twin was made from.

Run by cron or by `fraud-train retrain --watch --compact`, never by the server: the
conversion takes pandas and a core for seconds per segment, which the scoring pods should
not spend. Twins go beside their segments; the server's retention deletes them with their
segments (and any whose segment is gone).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from service.records.schema import (
    RecordKind,
    segment_glob,
    segment_opened_at,
    segment_writer,
)
from training.retraining.feedback import (
    FeedbackError,
    decision_table,
    outcome_table,
    parse_decisions,
    parse_outcomes,
)
from training.retraining.segment_twins import TwinFooter, current_twin, write_twin

CLOSED_AFTER_SECONDS = 3_600
_SECONDS_PER_DAY = 86_400
# A temporary twin left by a compaction killed mid-write, once this old, is deleted.
_STALE_ASIDE_SECONDS = 3_600


@dataclass
class Compaction:
    """What one directory's compaction did."""

    kind: RecordKind
    written: int = 0
    already_current: int = 0
    still_open: int = 0
    source_bytes: int = 0
    twin_bytes: int = 0
    seconds: float = 0.0
    written_names: list[str] = field(default_factory=list)

    def summary(self) -> str:
        ratio = f", {self.twin_bytes / self.source_bytes:.0%} of the JSON" if self.written else ""
        return (
            f"{self.kind}: {self.written} twin(s) written ({self.source_bytes / 2**20:.1f} MiB of "
            f"JSON lines in {self.seconds:.1f} s{ratio}), {self.already_current} already "
            f"current, {self.still_open} segment(s) maybe still being written"
        )


def closed_segments(directory: Path, kind: RecordKind, now: float) -> tuple[list[Path], int]:
    """The closed `kind` segments of `directory` in name order, and how many others there
    are (maybe still written to)."""
    latest: dict[str, tuple[float, int, Path]] = {}
    found: list[tuple[Path, float, str, int]] = []
    for path in sorted(directory.glob(segment_glob(kind))):
        writer = segment_writer(path.name, kind)
        opened_at = segment_opened_at(path.name, kind)
        if writer is None or opened_at is None:
            continue  # an operator's own copy: read as it is, never compacted
        name, seq = writer
        found.append((path, opened_at, name, seq))
        if (opened_at, seq) > latest.get(name, (float("-inf"), -1, path))[:2]:
            latest[name] = (opened_at, seq, path)
    closed = []
    for path, opened_at, name, _seq in found:
        day_ended = (opened_at // _SECONDS_PER_DAY + 1) * _SECONDS_PER_DAY
        if latest[name][2] != path or day_ended + CLOSED_AFTER_SECONDS <= now:
            closed.append(path)
    return closed, len(found) - len(closed)


def compact(
    directory: Path,
    kind: RecordKind,
    *,
    feature_count: int,
    clock: Callable[[], float] = time.time,
) -> Compaction:
    """Write the missing twins of `directory`'s closed `kind` segments."""
    if not directory.is_dir():
        raise FeedbackError(f"{kind} log directory {directory} does not exist")
    started = time.monotonic()
    _delete_stale_asides(directory, kind, clock())
    closed, still_open = closed_segments(directory, kind, clock())
    done = Compaction(kind, still_open=still_open)
    for segment in closed:
        try:
            content = segment.read_bytes()
        except FileNotFoundError:
            continue  # deleted by retention meanwhile
        except OSError as error:
            raise FeedbackError(f"cannot read {kind} segment {segment}: {error}") from error
        if current_twin(segment, len(content)):
            done.already_current += 1
            continue
        twin = _write(segment, content, kind, feature_count)
        if not segment.exists():  # retention deleted it while its twin was made
            twin.unlink(missing_ok=True)
            continue
        done.written += 1
        done.written_names.append(twin.name)
        done.source_bytes += len(content)
        done.twin_bytes += twin.stat().st_size
    done.seconds = time.monotonic() - started
    return done


def _write(segment: Path, content: bytes, kind: RecordKind, feature_count: int) -> Path:
    digest = hashlib.sha256(content).hexdigest()
    if kind == "decisions":
        part = parse_decisions(content, feature_count=feature_count)
        footer = TwinFooter(
            len(content), digest, part.skipped_lines, {"feature_count": feature_count}
        )
        return write_twin(segment, decision_table(part), footer)
    outcomes = parse_outcomes(content)
    footer = TwinFooter(len(content), digest, outcomes.skipped_lines, {})
    return write_twin(segment, outcome_table(outcomes), footer)


def _delete_stale_asides(directory: Path, kind: RecordKind, now: float) -> None:
    for aside in directory.glob(f".{kind}-*.parquet.*.tmp"):
        try:
            if aside.stat().st_mtime + _STALE_ASIDE_SECONDS <= now:
                aside.unlink(missing_ok=True)
        except FileNotFoundError:
            continue
