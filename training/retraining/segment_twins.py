"""Parquet twins of closed log segments: a segment's parsed rows, read some tens of times
faster than its JSON lines (benchmarks/RESULTS.md, "Retraining from months of logs").

A twin sits beside its segment, named `<segment>.parquet` (`service.records.schema.twin_of`),
and records in its footer the size and SHA-256 of the segment bytes it was made from, the
lines of them the schema refused, and the format of its columns. A reader uses it only
while the segment still has that size (a segment that grew since was not closed: its JSON
is read), its footer names this format, and its pages pass their CRC checks; otherwise the
JSON lines are read, so a twin can only make a read faster, never change it.

Written aside (a hidden temporary name in the same directory), fsynced, then renamed, and
the directory fsynced: a reader sees a whole twin or none. Created 0600 like the segment:
it holds the same amounts, terminals and merchants (and, like it, card tokens only).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from service.records.schema import twin_of
from training.durable_files import fsync_path

TWIN_FORMAT = 1
"""Bumped whenever what a twin's columns mean changes: older twins are then ignored."""
_FOOTER_KEY = b"fraud.segment_twin"
FILE_MODE = 0o600


@dataclass(frozen=True)
class TwinFooter:
    """What a twin says of the segment bytes it was made from."""

    source_bytes: int
    source_sha256: str
    skipped_lines: int
    details: dict[str, Any]
    """Reader-specific facts (the feature vector length a decision twin was parsed with)."""


def twin_path(segment: Path) -> Path:
    return segment.with_name(twin_of(segment.name))


def write_twin(segment: Path, table: pa.Table, footer: TwinFooter) -> Path:
    """Write `table` as `segment`'s twin, atomically and durably; returns its path."""
    target = twin_path(segment)
    aside = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    record = {
        "format": TWIN_FORMAT,
        "source_bytes": footer.source_bytes,
        "source_sha256": footer.source_sha256,
        "skipped_lines": footer.skipped_lines,
        "details": footer.details,
    }
    metadata = {**(table.schema.metadata or {}), _FOOTER_KEY: json.dumps(record).encode()}
    descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(descriptor, "wb") as file:
            pq.write_table(
                table.replace_schema_metadata(metadata),
                file,
                compression="zstd",
                write_page_checksum=True,
            )
            file.flush()
            os.fsync(file.fileno())
        aside.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            aside.unlink()
        raise
    fsync_path(target.parent)
    return target


def read_twin(segment: Path, source_bytes: int) -> tuple[pa.Table, TwinFooter] | None:
    """`segment`'s twin, if it has one made from its current `source_bytes` bytes in this
    format and it reads whole; None otherwise (the segment's JSON is then read)."""
    path = twin_path(segment)
    try:
        footer = _footer(pq.read_schema(path).metadata or {})
        if footer is None or footer.source_bytes != source_bytes:
            return None
        table = pq.read_table(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException, ValueError):
        # Absent, or not a whole Parquet file: never half-read, so only another writer's
        # damage gets here, and the segment itself is still there to read.
        return None
    return table, footer


def current_twin(segment: Path, source_bytes: int) -> bool:
    """Whether `segment` has a twin made from its current `source_bytes` bytes, in this
    format (its footer alone is read)."""
    try:
        footer = _footer(pq.read_schema(twin_path(segment)).metadata or {})
    except (OSError, pa.ArrowException, ValueError):
        return False
    return footer is not None and footer.source_bytes == source_bytes


def _footer(metadata: dict[bytes, bytes]) -> TwinFooter | None:
    raw = metadata.get(_FOOTER_KEY)
    if raw is None:
        return None
    record = json.loads(raw)
    if record.get("format") != TWIN_FORMAT:
        return None
    return TwinFooter(
        source_bytes=int(record["source_bytes"]),
        source_sha256=str(record["source_sha256"]),
        skipped_lines=int(record["skipped_lines"]),
        details=dict(record["details"]),
    )
