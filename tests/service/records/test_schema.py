"""Tests for service.records.schema: the server's writers and training's reader agree on every
field of a line and on segment names. Lines are written by the real writers (closed to flush)
and read back by training's real readers."""

from __future__ import annotations

import fnmatch
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from service.core.domain import (
    Decision,
    DecisionSource,
    EntryMode,
    FallbackReason,
    Outcome,
    OutcomeFate,
    ScoreResult,
    Transaction,
)
from service.features import FEATURE_ENGINE_VERSION, FeatureConfig
from service.records.decision_writer import DecisionLogWriter
from service.records.outcome_writer import OutcomeLogWriter
from service.records.quarantine_writer import QuarantineWriter
from service.records.schema import (
    DECISION_SCHEMA,
    OUTCOME_SCHEMA,
    QUARANTINE_SCHEMA,
    RECORD_KINDS,
    SCHEMAS,
    DecisionLine,
    Field,
    LineSchema,
    OutcomeLine,
    QuarantineLine,
    RecordKind,
    host_for_segments,
    is_segment,
    iso_utc,
    segment_glob,
    segment_name,
    segment_opened_at,
)
from service.records.segment_log import LogLimits
from training.retraining.feedback import read_decision_log, read_outcomes

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LOGGED_AT = datetime(2026, 9, 2, 8, 0, 0, 654_321, UTC)
RECEIVED_AT = datetime(2026, 9, 3, 9, 30, 0, 123_456, UTC)
FEATURE_COUNT = 3

# Decisions in event-time order, the order the reader sorts them in.
DECISIONS: list[tuple[Transaction, list[float] | None, ScoreResult]] = [
    (
        Transaction(
            transaction_id="tx-model",
            timestamp=datetime(2026, 9, 1, 10, 0, 0, 123_456, UTC).timestamp(),
            card_id="tok_0123456789abcdef0123456789abcdef",
            terminal_id="term-1",
            amount=12.5,
            merchant_id="merch-1",
            mcc=5411,
            entry_mode=EntryMode.CONTACTLESS,
            currency="EUR",
            country="FR",
            card_present=True,
        ),
        [12.5, math.nan, 3.0],
        ScoreResult(
            "tx-model", 0.8125, Decision.DECLINE, (), "20260901T000000Z", DecisionSource.MODEL, None
        ),
    ),
    (
        # Every optional field not known; an event time on the second, which orjson writes
        # without a fraction.
        Transaction(
            transaction_id="tx-deadline",
            timestamp=datetime(2026, 9, 1, 11, 0, 0, tzinfo=UTC).timestamp(),
            card_id="tok_fedcba9876543210fedcba9876543210",
            terminal_id="term-2",
            amount=7,
        ),
        None,
        ScoreResult(
            "tx-deadline",
            0.0,
            Decision.REVIEW,
            (),
            "",
            DecisionSource.FALLBACK,
            FallbackReason.DEADLINE,
        ),
    ),
    (
        Transaction(
            transaction_id="tx-error",
            timestamp=datetime(2026, 9, 1, 12, 30, 15, 5, UTC).timestamp(),
            card_id="tok_00000000000000000000000000000000",
            terminal_id="term-3",
            amount=1_999.99,
            merchant_id="merch-2",
            mcc=4829,
            entry_mode=EntryMode.MANUAL,
            currency="JPY",
            country="JP",
            card_present=False,
        ),
        [0.0, -1.5, 1e-30],
        ScoreResult(
            "tx-error",
            0.0,
            Decision.APPROVE,
            (),
            "",
            DecisionSource.FALLBACK,
            FallbackReason.MODEL_ERROR,
        ),
    ),
]
# (transaction id, is fraud, reported at, caller rank) in report order, the order the reader
# sorts them in.
OUTCOMES = [
    ("tx-model", True, datetime(2026, 9, 2, 0, 0, 0, 250_000, UTC), 2),
    ("tx-error", False, datetime(2026, 9, 2, 6, 0, 0, tzinfo=UTC), 0),
    ("tx-model", False, datetime(2026, 9, 3, 1, 2, 3, 456_789, UTC), 1),
]


def ns(moment: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime (exact for microsecond times)."""
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000


def event_ns(tx: Transaction) -> int:
    return ns(datetime.fromtimestamp(tx.timestamp, UTC))


def write_decisions(directory: Path) -> None:
    log = DecisionLogWriter(directory, feature_config=FeatureConfig(), clock=LOGGED_AT.timestamp)
    for decision in DECISIONS:
        log.on_answer(*decision, None)
    log.close()


def write_outcomes(directory: Path) -> None:
    log = OutcomeLogWriter(directory, clock=RECEIVED_AT.timestamp)
    for transaction_id, is_fraud, reported_at, rank in OUTCOMES:
        log.record(transaction_id, is_fraud, reported_at.timestamp(), "a-caller", rank)
    log.close()


def write_quarantine(directory: Path) -> None:
    log = QuarantineWriter(directory, LogLimits(), clock=RECEIVED_AT.timestamp)
    for transaction_id, is_fraud, reported_at, rank in OUTCOMES:
        outcome = Outcome(transaction_id, is_fraud, reported_at.timestamp())
        log.on_outcome(outcome, OutcomeFate.NOT_HELD, rank)
    log.close()


WRITERS = {"decisions": write_decisions, "outcomes": write_outcomes, "quarantine": write_quarantine}


def write(kind: RecordKind, directory: Path) -> Path:
    """Write `kind`'s sample records through its writer; the one segment written."""
    WRITERS[kind](directory)
    (segment,) = directory.iterdir()
    return segment


def read_back(kind: RecordKind, directory: Path) -> tuple[pd.DataFrame, int]:
    """`kind`'s log in `directory` as its reader reads it: the frame and the lines skipped."""
    if kind == "decisions":
        decisions = read_decision_log(directory, feature_count=FEATURE_COUNT)
        return decisions.frame, decisions.skipped_lines
    outcomes = read_outcomes(directory)
    return outcomes.frame, outcomes.skipped_lines


def lines(segment: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in segment.read_text().splitlines()]


def plain(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's rows as plain Python values, <NA> as None."""
    return [
        {str(name): None if value is pd.NA else value for name, value in record.items()}
        for record in frame.astype(object).to_dict("records")
    ]


def expected_decision_row(tx: Transaction, result: ScoreResult) -> dict[str, Any]:
    """The frame row the reader must give for a decision the writer wrote."""
    return {
        "transaction_id": tx.transaction_id,
        "event_ns": event_ns(tx),
        "card": tx.card_id,
        "terminal_id": tx.terminal_id,
        "merchant_id": tx.merchant_id,
        "amount": tx.amount,
        "currency": tx.currency,
        "mcc": tx.mcc,
        "entry_mode": int(tx.entry_mode),
        "card_present": tx.card_present,
        "country": tx.country,
        "score": result.score,
        "decision": result.decision.name,
        "source": result.source.name,
        "fallback_reason": result.fallback_reason or "",
        "model_version": result.model_version,
        "feature_engine_version": FEATURE_ENGINE_VERSION,
        "feature_config": FeatureConfig().fingerprint,
    }


def test_decisions_written_by_the_server_read_back_field_by_field(tmp_path: Path) -> None:
    """Every field of the transaction and of the answer, the engine and settings it was
    scored with, the event time to the microsecond and the features (NaN as NaN, none as
    flagged) come back from the reader as the writer was given them."""
    write_decisions(tmp_path)
    log = read_decision_log(tmp_path, feature_count=FEATURE_COUNT)

    assert (log.skipped_lines, log.duplicates, log.segments) == (0, 0, 1)
    assert plain(log.frame) == [expected_decision_row(tx, result) for tx, _, result in DECISIONS]
    assert Decision[log.frame["decision"][0]] is Decision.DECLINE
    assert FallbackReason(log.frame["fallback_reason"][1]) is FallbackReason.DEADLINE
    assert log.has_features.tolist() == [features is not None for _, features, _ in DECISIONS]
    for row, (_, features, _) in enumerate(DECISIONS):
        written = np.full(FEATURE_COUNT, np.nan) if features is None else features
        np.testing.assert_array_equal(log.features[row], np.array(written, dtype=np.float32))


def test_outcomes_written_by_the_server_read_back_field_by_field(tmp_path: Path) -> None:
    """Each outcome's id, label, report time and receipt time come back, to the microsecond."""
    write_outcomes(tmp_path)
    outcomes = read_outcomes(tmp_path)

    assert (outcomes.skipped_lines, outcomes.segments) == (0, 1)
    assert plain(outcomes.frame) == [
        {
            "transaction_id": transaction_id,
            "is_fraud": is_fraud,
            "reported_ns": ns(reported_at),
            "received_ns": ns(RECEIVED_AT),
            "caller_rank": rank,
        }
        for transaction_id, is_fraud, reported_at, rank in OUTCOMES
    ]


def test_quarantined_outcomes_are_read_with_the_outcome_log(tmp_path: Path) -> None:
    """The quarantine's segments, in the outcome log's directory, are read as outcomes too:
    a late chargeback there can label a logged decision."""
    write_outcomes(tmp_path)
    write_quarantine(tmp_path)
    outcomes = read_outcomes(tmp_path)
    assert (outcomes.skipped_lines, outcomes.segments) == (0, 2)
    assert outcomes.frame["transaction_id"].tolist() == [
        transaction_id for transaction_id, *_ in OUTCOMES for _copy in (0, 1)
    ]


@pytest.mark.parametrize("kind", RECORD_KINDS)
def test_every_field_the_schema_declares_is_written_in_its_order(
    kind: RecordKind, tmp_path: Path
) -> None:
    """Each line the writer writes has exactly the schema's fields, in the schema's order,
    each of a type the reader accepts: a field added to one side only fails here."""
    schema = SCHEMAS[kind]
    written = lines(write(kind, tmp_path))
    assert [tuple(line) for line in written] == [schema.names] * len(written)
    assert all(schema.accepts(line) for line in written)


def test_the_times_a_writer_holds_are_written_in_iso_utc(tmp_path: Path) -> None:
    """`logged_at`, `reported_at` and `received_at` are `iso_utc`'s; `event_time` is ISO 8601
    UTC too, with a fraction of a second only when there is one."""
    decisions = lines(write("decisions", tmp_path / "decisions"))
    outcomes = lines(write("outcomes", tmp_path / "outcomes"))
    assert {line["logged_at"] for line in decisions} == {iso_utc(LOGGED_AT.timestamp())}
    assert [line["event_time"] for line in decisions] == [
        "2026-09-01T10:00:00.123456+00:00",
        "2026-09-01T11:00:00+00:00",
        "2026-09-01T12:30:15.000005+00:00",
    ]
    assert [line["reported_at"] for line in outcomes] == [
        iso_utc(reported_at.timestamp()) for _, _, reported_at, _ in OUTCOMES
    ]
    assert iso_utc(RECEIVED_AT.timestamp()) == "2026-09-03T09:30:00.123456+00:00"


@pytest.mark.parametrize(
    ("line_type", "schema"),
    [
        (DecisionLine, DECISION_SCHEMA),
        (OutcomeLine, OUTCOME_SCHEMA),
        (QuarantineLine, QUARANTINE_SCHEMA),
    ],
    ids=RECORD_KINDS,
)
def test_the_writers_line_types_are_the_schemas_fields(
    line_type: type[Any], schema: LineSchema
) -> None:
    """The TypedDict mypy checks a writer against names the schema's fields, in order, every
    one required: a writer cannot leave one out."""
    assert tuple(line_type.__annotations__) == schema.names
    assert line_type.__required_keys__ == frozenset(schema.names)


def fields(required: bool) -> list[tuple[RecordKind, Field]]:
    return [
        (schema.kind, field)
        for schema in SCHEMAS.values()
        for field in schema.fields
        if field.required is required
    ]


def remove_field(segment: Path, name: str) -> str:
    """Rewrite `segment` with `name` left out of its first line; that line's transaction id."""
    first, *rest = lines(segment)
    transaction_id = str(first["transaction_id"])
    del first[name]
    segment.write_text("".join(json.dumps(line) + "\n" for line in [first, *rest]))
    return transaction_id


@pytest.mark.parametrize(
    ("kind", "field"), fields(required=True), ids=lambda value: getattr(value, "name", value)
)
def test_a_line_without_a_required_field_is_skipped_and_counted(
    kind: RecordKind, field: Field, tmp_path: Path
) -> None:
    """The reader skips a line that lacks a required field, counts it, and reads the rest."""
    segment = write(kind, tmp_path)
    incomplete = remove_field(segment, field.name)
    frame, skipped = read_back(kind, tmp_path)
    assert skipped == 1
    assert len(frame) == len(lines(segment)) - 1
    if kind == "decisions":  # outcome ids repeat: the other report of it is still there
        assert incomplete not in frame["transaction_id"].tolist()


@pytest.mark.parametrize(
    ("kind", "field"), fields(required=False), ids=lambda value: getattr(value, "name", value)
)
def test_a_line_without_an_optional_field_reads_it_as_absent(
    kind: RecordKind, field: Field, tmp_path: Path
) -> None:
    """A line written before an optional field existed is read, the field as its `absent`
    value (where the reader keeps the field)."""
    segment = write(kind, tmp_path)
    incomplete = remove_field(segment, field.name)
    frame, skipped = read_back(kind, tmp_path)
    assert (skipped, len(frame)) == (0, len(lines(segment)))
    if field.name in frame.columns:
        # The line changed is its transaction's first, and the earliest reported.
        row = plain(frame[frame["transaction_id"] == incomplete])[0]
        assert row[field.name] == field.absent


def test_segment_names_give_back_their_opening_time() -> None:
    """A name's time is the opening time to the microsecond; other names are not segments."""
    opened_at = datetime(2026, 9, 1, 23, 59, 59, 500_000, UTC).timestamp()
    name = segment_name("decisions", opened_at, 42, 7)
    assert name == "decisions-20260901T235959500000Z-42-7.jsonl"
    assert segment_opened_at(name, "decisions") == opened_at
    assert segment_opened_at(name, "outcomes") is None
    assert segment_opened_at("decisions-today.jsonl", "decisions") is None
    assert segment_opened_at("decisions-20261301T000000000000Z-1-0.jsonl", "decisions") is None


def test_segments_of_replicas_sharing_a_volume_are_named_apart_by_host() -> None:
    """Pods often all run their server as pid 1: the host (the pod's name) keeps their
    segments apart, and names from before the host part still count as segments."""
    opened_at = datetime(2026, 9, 1, 0, 0, tzinfo=UTC).timestamp()
    names = {
        segment_name("decisions", opened_at, 1, 0, host_for_segments(pod))
        for pod in ("fraud-scoring-7d9f-abcde", "fraud-scoring-7d9f-fghij")
    }
    assert names == {
        "decisions-20260901T000000000000Z-fraud-scoring-7d9f-abcde-1-0.jsonl",
        "decisions-20260901T000000000000Z-fraud-scoring-7d9f-fghij-1-0.jsonl",
    }
    assert all(segment_opened_at(name, "decisions") == opened_at for name in names)
    assert host_for_segments("Node_7.Example.COM") == "node.7.example.com"
    assert host_for_segments("x" * 80) == "x" * 63


@pytest.mark.parametrize("kind", RECORD_KINDS)
def test_a_kinds_segments_are_its_own_and_match_its_glob(kind: RecordKind) -> None:
    """A segment name is its kind's only, and matches the glob a lister narrows by first."""
    name = segment_name(kind, 1_788_000_000.25, 7, 10)
    assert fnmatch.fnmatchcase(name, segment_glob(kind))
    assert [other for other in RECORD_KINDS if is_segment(name, other)] == [kind]
    assert not is_segment(f"{kind}-backup.jsonl", kind)


def test_the_schemas_are_the_kinds() -> None:
    """One schema a kind, under its own name."""
    assert tuple(SCHEMAS) == RECORD_KINDS
    assert all(schema.kind == kind for kind, schema in SCHEMAS.items())
