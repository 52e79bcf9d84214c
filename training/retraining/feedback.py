"""The server's decision and outcome logs, read back and turned into point-in-time labels.

Both logs are directories of JSON-lines segments, their names and their lines as
`service.records.schema` defines them, the one definition the server's writers write by.
Every file matching `<kind>-*.jsonl` is read (a copy an operator named so too), in name
order (for the server's segments: the time each was opened, then the writing process and
its count of segments), so "first" means first in that order, then in file order.

Reading tolerates what a crash or a full disk leaves behind: a line the schema does not
accept (not JSON, a required field missing, a field of the wrong type, an integer beyond
int64) or with a time out of range (before 1677 or after 2262) is skipped and counted, never
fatal. An optional field a line leaves out reads as the schema's `absent` value. Blank lines
are ignored. A decision logged twice under one transaction id keeps its first line with
features (else its first line).

Labels follow the DATA clock: a transaction's event time and an outcome's `reported_at`, as
the caller sent them, never the wall time a file was written. As of a moment T, only outcomes
reported at or before T are known, and of them the highest-ranked caller's, the latest among
equals (a correction counts as a report), gives the label: the server's rule for conflicting
reports (`service.core.label_conflicts`). A transaction without a known outcome counts as
genuine once its label delay has passed by T, and is unknown before that. A label is thus
never used before it was known. The outcome directory's quarantine (`quarantine-*.jsonl`:
outcomes of transactions the server's state did not hold) is read with the outcome log: a
late chargeback there labels its logged decision, a made-up id labels nothing.

Errors::

    FeedbackError    a log directory is missing, unreadable or holds no segment; or the
                     logs cannot label as of the moment asked (`training.retraining.retrain`)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
from numpy.typing import NDArray

from service.records.schema import (
    DECISION_SCHEMA,
    OUTCOME_SCHEMA,
    QUARANTINE_SCHEMA,
    LineSchema,
    segment_glob,
)
from training.retraining.deciding_reports import deciding_reports
from training.retraining.segment_twins import read_twin

UNKNOWN_LABEL = -1
# When a label that is not known yet became known: never, which sorts after every real time.
NOT_KNOWN_NS = np.iinfo(np.int64).max

_Part = TypeVar("_Part")

_FIRST_NS_TIME = pd.Timestamp.min.tz_localize("UTC")
_LAST_NS_TIME = pd.Timestamp.max.tz_localize("UTC")


class FeedbackError(Exception):
    """The logs cannot be used: a directory missing, unreadable or without any segment, no
    readable record, or an as-of moment they cannot label."""


@dataclass(frozen=True)
class LoggedDecisions:
    """One row per logged transaction, sorted by (event_ns, transaction_id).

    `frame` columns, a line's fields of the same names unless said: transaction_id,
    event_ns (`event_time` in ns since the epoch, UTC), card (the card token), terminal_id,
    merchant_id, amount, currency, mcc, entry_mode, card_present (nullable), country, score,
    decision, source, fallback_reason, model_version, feature_engine_version, feature_config
    (the fingerprint of the feature settings). An optional field a line leaves out is its
    schema's `absent` value ("" for a line written before feature settings had a
    fingerprint). `features[i]` is row i's logged vector (NaN for null entries, all NaN when
    `has_features[i]` is False: no vector logged, or one of another length).
    """

    frame: pd.DataFrame
    features: NDArray[np.float32]
    has_features: NDArray[np.bool_]
    skipped_lines: int
    segments: int
    duplicates: int

    def __len__(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class LoggedOutcomes:
    """Reported outcomes, sorted by reported_ns (file order among equal times).

    `frame` columns: transaction_id, is_fraud, reported_ns, received_ns (ns since the epoch),
    caller_rank (the reporting caller's rank when the server received it, 0 before ranks).
    The quarantine's lines are among them: outcomes of transactions the server's state no
    longer (or never) held, which label a logged decision all the same when their id is
    one (a late chargeback); made-up ids match none.
    """

    frame: pd.DataFrame
    skipped_lines: int
    segments: int


class SegmentMap(Protocol):
    """Applies a one-segment reader to every segment, giving the results in segment order:
    in this process (`map_here`) or on a Dask cluster
    (`training.retraining.cluster_logs.map_on_cluster`)."""

    def __call__(self, read: Callable[[Path], _Part], paths: Sequence[Path]) -> list[_Part]: ...


def map_here(read: Callable[[Path], _Part], paths: Sequence[Path]) -> list[_Part]:
    """One segment after the other in this process: only one segment's lines at a time."""
    return [read(path) for path in paths]


@dataclass(frozen=True)
class DecisionPart:
    """One segment's readable decisions in file order, parsed (`read_decision_segment`)."""

    frame: pd.DataFrame
    features: NDArray[np.float32]
    has_features: NDArray[np.bool_]
    skipped_lines: int


@dataclass(frozen=True)
class OutcomePart:
    """One segment's readable outcomes in file order (`read_outcome_segment`)."""

    frame: pd.DataFrame
    skipped_lines: int


def read_decision_log(
    directory: Path, *, feature_count: int, map_segments: SegmentMap = map_here
) -> LoggedDecisions:
    """Every decision logged in `directory`, with feature vectors of `feature_count` values,
    read a segment at a time by `map_segments`."""
    paths = _segments(directory, DECISION_SCHEMA)
    read = functools.partial(read_decision_segment, feature_count=feature_count)
    parts = map_segments(read, paths)
    frame = pd.concat([part.frame for part in parts], ignore_index=True)
    features = np.concatenate([part.features for part in parts])
    has_features = np.concatenate([part.has_features for part in parts])
    # A "deadline" answer is logged without features and its retry again, with them: of a
    # transaction's lines, the first with features wins, else its first line.
    preferred = frame.assign(_without=~has_features).sort_values("_without", kind="stable")
    unique = preferred.drop_duplicates("transaction_id", keep="first").drop(columns="_without")
    ordered = unique.sort_values(["event_ns", "transaction_id"], kind="stable")
    rows = ordered.index.to_numpy()
    return LoggedDecisions(
        frame=ordered.reset_index(drop=True),
        features=features[rows],
        has_features=has_features[rows],
        skipped_lines=sum(part.skipped_lines for part in parts),
        segments=len(paths),
        duplicates=len(frame) - len(unique),
    )


def read_outcomes(directory: Path, *, map_segments: SegmentMap = map_here) -> LoggedOutcomes:
    """Every outcome logged in `directory`, the quarantine's too (`segments` counts both), in
    the order they were reported, read a segment at a time by `map_segments`."""
    paths = _segments(directory, OUTCOME_SCHEMA, QUARANTINE_SCHEMA)
    parts = map_segments(read_outcome_segment, paths)
    frame = pd.concat([part.frame for part in parts], ignore_index=True)
    return LoggedOutcomes(
        frame=frame.sort_values("reported_ns", kind="stable").reset_index(drop=True),
        skipped_lines=sum(part.skipped_lines for part in parts),
        segments=len(paths),
    )


def read_decision_segment(path: Path, *, feature_count: int) -> DecisionPart:
    """One decision segment: its Parquet twin when it has a current one, else its lines."""
    size = _size(path, DECISION_SCHEMA)
    twin = read_twin(path, size)
    if twin is not None:
        table, footer = twin
        if footer.details.get("feature_count") == feature_count and _matches(
            table, _decision_columns(feature_count)
        ):
            return decision_part_of(table, footer.skipped_lines)
    return parse_decisions(_content(path, DECISION_SCHEMA), feature_count=feature_count)


def read_outcome_segment(path: Path) -> OutcomePart:
    """One outcome segment: its Parquet twin when it has a current one, else its lines."""
    twin = read_twin(path, _size(path, OUTCOME_SCHEMA))
    if twin is not None:
        table, footer = twin
        if _matches(table, _outcome_columns()):
            frame: pd.DataFrame = table.to_pandas()
            return OutcomePart(frame, footer.skipped_lines)
    return parse_outcomes(_content(path, OUTCOME_SCHEMA))


def parse_decisions(content: bytes, *, feature_count: int) -> DecisionPart:
    """A decision segment's bytes parsed: its readable lines in file order."""
    lines = _valid_lines(content, DECISION_SCHEMA)
    event_ns, timed = _iso_ns(_values(lines.records, DECISION_SCHEMA, "event_time"))
    records = [record for record, ok in zip(lines.records, timed, strict=True) if ok]
    features, has_features = _feature_matrix(
        _values(records, DECISION_SCHEMA, "features"), feature_count
    )
    return DecisionPart(
        frame=_decision_frame(records, event_ns[timed]),
        features=features,
        has_features=has_features,
        skipped_lines=lines.skipped + int((~timed).sum()),
    )


def parse_outcomes(content: bytes) -> OutcomePart:
    """An outcome segment's bytes parsed: its readable lines in file order."""
    lines = _valid_lines(content, OUTCOME_SCHEMA)
    reported_ns, reported_ok = _iso_ns(_values(lines.records, OUTCOME_SCHEMA, "reported_at"))
    received_ns, received_ok = _iso_ns(_values(lines.records, OUTCOME_SCHEMA, "received_at"))
    timed = reported_ok & received_ok
    records = [record for record, ok in zip(lines.records, timed, strict=True) if ok]
    frame = pd.DataFrame(
        {
            "transaction_id": _strings(records, OUTCOME_SCHEMA, "transaction_id"),
            "is_fraud": np.array(_values(records, OUTCOME_SCHEMA, "is_fraud"), dtype=np.bool_),
            "reported_ns": reported_ns[timed],
            "received_ns": received_ns[timed],
            "caller_rank": np.array(_values(records, OUTCOME_SCHEMA, "caller_rank"), np.int64),
        }
    )
    return OutcomePart(frame, lines.skipped + int((~timed).sum()))


def decision_table(part: DecisionPart) -> pa.Table:
    """A parsed decision segment as a twin's columns: the frame's, then the vectors."""
    table = pa.Table.from_pandas(part.frame, preserve_index=False)
    count = part.features.shape[1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(part.features.reshape(-1)), count)
    table = table.append_column("features", vectors)
    return table.append_column("has_features", pa.array(part.has_features))


def decision_part_of(table: pa.Table, skipped_lines: int) -> DecisionPart:
    """`decision_table`'s inverse."""
    vectors = table.column("features").combine_chunks()
    count = vectors.type.list_size
    flat = vectors.flatten().to_numpy(zero_copy_only=False)
    frame: pd.DataFrame = table.drop_columns(["features", "has_features"]).to_pandas()
    return DecisionPart(
        frame=frame,
        features=flat.astype(np.float32, copy=False).reshape(-1, count),
        has_features=table.column("has_features").to_numpy().astype(np.bool_, copy=False),
        skipped_lines=skipped_lines,
    )


def outcome_table(part: OutcomePart) -> pa.Table:
    """A parsed outcome segment as a twin's columns."""
    return pa.Table.from_pandas(part.frame, preserve_index=False)


@functools.cache
def _decision_columns(feature_count: int) -> pa.Schema:
    """What a decision twin holds: the columns of an empty segment parsed now."""
    return decision_table(parse_decisions(b"", feature_count=feature_count)).schema


@functools.cache
def _outcome_columns() -> pa.Schema:
    return outcome_table(parse_outcomes(b"")).schema


def _matches(table: pa.Table, expected: pa.Schema) -> bool:
    """Whether a twin holds the columns this reader makes, of the same types: a twin made
    before a column was added is ignored, not read with the column missing."""
    return bool(table.schema.remove_metadata().equals(expected.remove_metadata()))


class LabelledOutcomes(NamedTuple):
    """Transactions' labels as of a moment (`label_outcomes`), row-aligned with them."""

    label: NDArray[np.int8]
    """1 fraud, 0 genuine, UNKNOWN_LABEL."""
    known_ns: NDArray[np.int64]
    """When each label became known: the deciding outcome's report time, or event time plus
    the label delay for a transaction genuine because nothing was reported; NOT_KNOWN_NS
    for an unknown label."""
    reported: NDArray[np.bool_]
    """Whether an outcome, fraud or genuine, was reported by then (whatever the event time):
    a label that rests on a report, not on silence."""


def label_outcomes(
    transaction_ids: NDArray[np.object_],
    event_ns: NDArray[np.int64],
    outcomes: LoggedOutcomes,
    *,
    as_of_ns: int,
    label_delay_ns: int,
) -> LabelledOutcomes:
    """Each transaction's label as known at `as_of_ns`, when it became known, and whether a
    report says it.

    Of the outcomes reported by then, the highest-ranked caller's decides, the latest among
    equals (`training.retraining.deciding_reports`); without one, a transaction is genuine
    once `label_delay_ns` has passed since its event, unknown before. A transaction whose
    event is after `as_of_ns` had not happened yet, so it is unknown whatever was reported.
    """
    events = np.asarray(event_ns, dtype=np.int64)
    known_ns = events + label_delay_ns
    label = np.where(known_ns <= as_of_ns, 0, UNKNOWN_LABEL).astype(np.int8)
    frame = outcomes.frame
    asked = frame["transaction_id"].isin(transaction_ids)
    visible = frame[(frame["reported_ns"] <= as_of_ns) & asked]
    latest = deciding_reports(visible)
    where = pd.Index(latest["transaction_id"]).get_indexer(pd.Index(transaction_ids))
    reported = where >= 0
    label[reported] = latest["is_fraud"].to_numpy(dtype=np.int8)[where[reported]]
    known_ns[reported] = latest["reported_ns"].to_numpy(dtype=np.int64)[where[reported]]
    unknown = (label == UNKNOWN_LABEL) | (events > as_of_ns)
    label[unknown] = UNKNOWN_LABEL
    known_ns[unknown] = NOT_KNOWN_NS
    return LabelledOutcomes(label, known_ns, reported)


def labels_as_of(
    transaction_ids: NDArray[np.object_],
    event_ns: NDArray[np.int64],
    outcomes: LoggedOutcomes,
    *,
    as_of_ns: int,
    label_delay_ns: int,
) -> NDArray[np.int8]:
    """Each transaction's label as known at `as_of_ns`: `label_outcomes`' labels alone."""
    return label_outcomes(
        transaction_ids, event_ns, outcomes, as_of_ns=as_of_ns, label_delay_ns=label_delay_ns
    ).label


def newest_time_ns(decisions: LoggedDecisions, outcomes: LoggedOutcomes) -> int:
    """The newest event time or report time in the logs: the default "as of" moment."""
    times = np.concatenate(
        [decisions.frame["event_ns"].to_numpy(), outcomes.frame["reported_ns"].to_numpy()]
    )
    if times.size == 0:
        raise FeedbackError("the logs hold no readable decision or outcome")
    return int(times.max())


class _Lines(NamedTuple):
    records: list[dict[str, Any]]
    skipped: int


def _size(path: Path, schema: LineSchema) -> int:
    try:
        return path.stat().st_size
    except OSError as error:
        raise FeedbackError(f"cannot read {schema.kind} segment {path}: {error}") from error


def _content(path: Path, schema: LineSchema) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise FeedbackError(f"cannot read {schema.kind} segment {path}: {error}") from error


def _valid_lines(content: bytes, schema: LineSchema) -> _Lines:
    """The records `schema` accepts among a segment's lines, in file order."""
    records: list[dict[str, Any]] = []
    skipped = 0
    for line in content.splitlines():
        if not line.strip():
            continue
        record = _parse(line)
        if schema.accepts(record):
            records.append(record)
        else:
            skipped += 1
    return _Lines(records, skipped)


def _segments(directory: Path, schema: LineSchema, *others: LineSchema) -> list[Path]:
    """The segments of `schema`'s kind, and of `others`', in `directory`, in name order;
    FeedbackError when there is none."""
    kind = schema.kind
    if not directory.is_dir():
        raise FeedbackError(f"{kind} log directory {directory} does not exist")
    try:
        paths = [
            path
            for each in (schema, *others)
            for path in directory.glob(segment_glob(each.kind))
            if path.is_file()
        ]
    except OSError as error:
        raise FeedbackError(f"cannot list {kind} log directory {directory}: {error}") from error
    if not paths:
        raise FeedbackError(
            f"{kind} log directory {directory} holds no {segment_glob(kind)} segment"
        )
    return sorted(paths, key=lambda path: _natural_key(path.name))


def _natural_key(name: str) -> tuple[str | int, ...]:
    """Digit runs compare as numbers, so a pid's segment 10 follows its segment 9."""
    # Splitting on a captured group puts the digit runs at the odd positions.
    parts = re.split(r"(\d+)", name)
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts))


def _parse(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:  # not UTF-8 or not JSON: a torn or corrupted line
        return None


def _iso_ns(stamps: list[str]) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Nanoseconds since the epoch of ISO 8601 `stamps` (naive ones are UTC), and which parsed;
    a time nanoseconds in int64 cannot hold (before 1677, after 2262) counts as unparsable."""
    parsed = pd.to_datetime(
        pd.Series(stamps, dtype="str"), format="ISO8601", utc=True, errors="coerce"
    )
    # pandas parses to microseconds (nanoseconds only when a stamp has them), which reach
    # far wider: out-of-range times must go before the conversion, which raises on them.
    representable = parsed.between(_FIRST_NS_TIME, _LAST_NS_TIME)
    in_ns = parsed.where(representable).dt.as_unit("ns")
    return in_ns.to_numpy(dtype=np.int64, na_value=0), representable.to_numpy()


def _values(records: Sequence[dict[str, Any]], schema: LineSchema, name: str) -> list[Any]:
    """Field `name` of each record, the schema's `absent` value where a record leaves it out
    (or, for a descriptive field, holds another type).

    Raises KeyError if the schema has no such field: a reader naming a field the writers do
    not write fails at once, instead of reading a column of `absent` values.
    """
    return schema.values(records, name)


def _strings(records: Sequence[dict[str, Any]], schema: LineSchema, name: str) -> pd.Series:
    return pd.Series(_values(records, schema, name), dtype="str")


def _decision_frame(records: Sequence[dict[str, Any]], event_ns: NDArray[np.int64]) -> pd.DataFrame:
    def strings(name: str) -> pd.Series:
        return _strings(records, DECISION_SCHEMA, name)

    def numbers(name: str, dtype: type[np.generic]) -> NDArray[Any]:
        # The schema accepts only integers within int64 for an int64 column.
        return np.array(_values(records, DECISION_SCHEMA, name), dtype=dtype)

    return pd.DataFrame(
        {
            "transaction_id": strings("transaction_id"),
            "event_ns": event_ns,
            "card": strings("card"),
            "terminal_id": strings("terminal_id"),
            "merchant_id": strings("merchant_id"),
            "amount": numbers("amount", np.float64),
            "currency": strings("currency"),
            "mcc": numbers("mcc", np.int64),
            "entry_mode": numbers("entry_mode", np.int64),
            # True, False or <NA> (not known).
            "card_present": pd.array(
                _values(records, DECISION_SCHEMA, "card_present"), dtype="boolean"
            ),
            "country": strings("country"),
            "score": numbers("score", np.float64),
            "decision": strings("decision"),
            "source": strings("source"),
            "fallback_reason": strings("fallback_reason"),
            "model_version": strings("model_version"),
            "feature_engine_version": numbers("feature_engine_version", np.int64),
            "feature_config": strings("feature_config"),
        }
    )


def _feature_matrix(
    vectors: Sequence[list[float | None] | None], feature_count: int
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Logged vectors as rows (null entries NaN); rows without a vector of the right length
    stay all NaN and are flagged False."""
    has = np.array(
        [vector is not None and len(vector) == feature_count for vector in vectors], dtype=np.bool_
    )
    matrix = np.full((len(vectors), feature_count), np.nan, dtype=np.float32)
    complete = [vector for vector, ok in zip(vectors, has, strict=True) if ok]
    if complete:
        # float32 conversion turns JSON nulls (None) into NaN.
        matrix[has] = np.array(complete, dtype=np.float32)
    return matrix, has
