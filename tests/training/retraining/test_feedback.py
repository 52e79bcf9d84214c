"""Reading the server's decision and outcome logs, and labelling them point-in-time-correctly."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.records import schema
from service.records.schema import RecordKind
from training.retraining.feedback import (
    NOT_KNOWN_NS,
    UNKNOWN_LABEL,
    FeedbackError,
    LoggedDecisions,
    LoggedOutcomes,
    label_outcomes,
    labels_as_of,
    newest_time_ns,
    read_decision_log,
    read_outcomes,
)

FEATURES = 3
START = datetime(2026, 9, 1, 10, tzinfo=UTC)
HOUR_NS = 3_600 * 10**9
DELAY_NS = 24 * HOUR_NS


def ns(moment: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime (exact for microsecond times)."""
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def at(hours: float) -> datetime:
    return START + timedelta(hours=hours)


def segment_name(kind: RecordKind, opened: datetime, pid: int, seq: int) -> str:
    """The name the server gives a segment it opened at `opened`."""
    return schema.segment_name(kind, opened.timestamp(), pid, seq)


def decision(
    transaction_id: str,
    hours: float,
    *,
    score: float = 0.1,
    features: list[float] | None = None,
) -> dict[str, Any]:
    """A decision record in the server's format; NaN features are written as null."""
    vector = [0.5, 1.0, 2.0] if features is None else features
    return {
        "transaction_id": transaction_id,
        "event_time": at(hours).isoformat(timespec="microseconds"),
        "card": "tok_" + transaction_id,
        "terminal_id": "T1",
        "merchant_id": "M1",
        "amount": 12.5,
        "currency": "EUR",
        "mcc": 5411,
        "entry_mode": 1,
        "card_present": True,
        "country": "DE",
        "score": score,
        "decision": "APPROVE",
        "source": "MODEL",
        "fallback_reason": "",
        "model_version": "v1",
        "feature_engine_version": 2,
        "features": [None if math.isnan(value) else value for value in vector],
        "logged_at": at(hours).isoformat(),
    }


def outcome(transaction_id: str, is_fraud: bool, reported_hours: float) -> dict[str, Any]:
    """An outcome record in the server's format, received a second after its report."""
    return {
        "transaction_id": transaction_id,
        "is_fraud": is_fraud,
        "reported_at": at(reported_hours).isoformat(timespec="microseconds"),
        "received_at": (at(reported_hours) + timedelta(seconds=1)).isoformat(
            timespec="microseconds"
        ),
    }


def write_segment(
    directory: Path, name: str, records: list[dict[str, Any]], tail: str = ""
) -> None:
    """One segment of JSON lines, optionally followed by raw text (such as a torn line)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(record) + "\n" for record in records)
    (directory / name).write_text(lines + tail, encoding="utf-8")


def write_outcomes(directory: Path, records: list[dict[str, Any]]) -> LoggedOutcomes:
    write_segment(directory, segment_name("outcomes", START, 100, 0), records)
    return read_outcomes(directory)


def labels(log: LoggedDecisions, outcomes: LoggedOutcomes, as_of_hours: float) -> list[int]:
    """The logged transactions' labels, in frame order, as of `as_of_hours`."""
    found: list[int] = labels_as_of(
        log.frame["transaction_id"].to_numpy(),
        log.frame["event_ns"].to_numpy(),
        outcomes,
        as_of_ns=ns(at(as_of_hours)),
        label_delay_ns=DELAY_NS,
    ).tolist()
    return found


def label_of(
    event_hours: float, outcome_records: list[dict[str, Any]], as_of_hours: float, tmp_path: Path
) -> int:
    """The label of one transaction "a" with an event at `event_hours`."""
    outcomes = write_outcomes(tmp_path / "outcomes", outcome_records)
    found = labels_as_of(
        np.array(["a"], dtype=object),
        np.array([ns(at(event_hours))], dtype=np.int64),
        outcomes,
        as_of_ns=ns(at(as_of_hours)),
        label_delay_ns=DELAY_NS,
    )
    return int(found[0])


@pytest.fixture
def decision_log(tmp_path: Path) -> LoggedDecisions:
    """Two pids' interleaved segments, a torn last line, a duplicate id and odd feature vectors."""
    directory = tmp_path / "decisions"
    write_segment(
        directory,
        segment_name("decisions", at(0), 200, 0),
        [decision("a", 0.0), decision("c", 2.0, features=[1.0, math.nan, 3.0])],
        tail='{"transaction_id": "torn", "event_ti',
    )
    write_segment(
        directory,
        segment_name("decisions", at(1), 100, 0),
        [decision("b", 1.0, features=[1.0, 2.0]), decision("a", 0.0, score=0.9)],
    )
    fallback = decision("d", 3.0) | {"features": None, "source": "FALLBACK", "model_version": ""}
    write_segment(directory, segment_name("decisions", at(3), 200, 1), [fallback])
    return read_decision_log(directory, feature_count=FEATURES)


def test_reads_every_segment_into_one_time_sorted_frame(decision_log: LoggedDecisions) -> None:
    """Rows from all segments come back once each, sorted by event time, with typed columns."""
    frame = decision_log.frame
    assert frame["transaction_id"].tolist() == ["a", "b", "c", "d"]
    assert frame["event_ns"].tolist() == [ns(at(hours)) for hours in (0, 1, 2, 3)]
    assert frame["event_ns"].dtype == np.int64
    assert frame["feature_engine_version"].dtype == np.int64
    assert frame["amount"].dtype == np.float64
    assert frame["source"].tolist() == ["MODEL", "MODEL", "MODEL", "FALLBACK"]
    assert len(decision_log) == 4
    assert decision_log.segments == 3


def test_duplicate_id_keeps_the_line_of_the_earliest_segment(decision_log: LoggedDecisions) -> None:
    """A transaction id logged twice keeps the line of the segment opened first (whatever its
    pid), and the duplicate is counted."""
    first = decision_log.frame.iloc[0]
    assert (first["transaction_id"], first["score"]) == ("a", 0.1)
    assert decision_log.duplicates == 1


def test_a_retry_after_a_deadline_answer_keeps_the_retrys_features(tmp_path: Path) -> None:
    """A "deadline" fallback is logged without features and its retry again with them: the
    line with features is kept, though it came second."""
    directory = tmp_path / "decisions"
    late = decision("x", 0.0, score=0.0) | {"features": None, "source": "FALLBACK"}
    write_segment(
        directory, segment_name("decisions", at(0), 100, 0), [late, decision("x", 0.0, score=0.7)]
    )
    log = read_decision_log(directory, feature_count=FEATURES)
    assert log.has_features.tolist() == [True]
    assert log.frame["score"].tolist() == [0.7]
    assert log.duplicates == 1


def test_torn_last_line_is_skipped_and_counted(decision_log: LoggedDecisions) -> None:
    """A partial last line is skipped, counted, and spoils nothing else."""
    assert decision_log.skipped_lines == 1
    assert "torn" not in decision_log.frame["transaction_id"].tolist()


def test_features_keep_nan_and_flag_missing_or_misshapen_vectors(
    decision_log: LoggedDecisions,
) -> None:
    """Null entries read as NaN; a null vector or one of another length is flagged, all NaN."""
    assert decision_log.features.dtype == np.float32
    assert decision_log.features.shape == (4, FEATURES)
    assert decision_log.has_features.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(decision_log.features[0], [0.5, 1.0, 2.0])
    np.testing.assert_array_equal(decision_log.features[2], [1.0, np.nan, 3.0])
    assert np.isnan(decision_log.features[[1, 3]]).all()


def test_invalid_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    """Non-JSON, a missing field, a wrong type, a boolean amount, a bad or out-of-range
    timestamp and an integer beyond int64 all skip."""
    missing_card = decision("m", 0.0)
    del missing_card["card"]
    write_segment(
        tmp_path,
        segment_name("decisions", START, 1, 0),
        [
            decision("ok", 0.0),
            missing_card,
            decision("score", 0.0) | {"score": "high"},
            decision("bool", 0.0) | {"amount": True},
            decision("vector", 0.0) | {"features": ["x", 1.0, 2.0]},
            decision("when", 0.0) | {"event_time": "yesterday"},
            decision("year", 0.0) | {"event_time": "9026-01-01T00:00:00+00:00"},
            decision("engine", 0.0) | {"feature_engine_version": 18446744073709551615},
        ],
        tail='["not", "an", "object"]\nnot json\n\n',
    )
    log = read_decision_log(tmp_path, feature_count=FEATURES)
    assert log.frame["transaction_id"].tolist() == ["ok"]
    assert log.skipped_lines == 9


def test_log_of_torn_lines_only_reads_empty(tmp_path: Path) -> None:
    """Segments with nothing readable give empty logs, for which there is no default as-of."""
    write_segment(tmp_path, segment_name("decisions", START, 1, 0), [], tail='{"transac')
    write_segment(tmp_path, segment_name("outcomes", START, 1, 0), [], tail="\x00\x00")
    log = read_decision_log(tmp_path, feature_count=FEATURES)
    outcomes = read_outcomes(tmp_path)
    assert (len(log), log.features.shape, log.skipped_lines) == (0, (0, FEATURES), 1)
    assert (len(outcomes.frame), outcomes.skipped_lines) == (0, 1)
    with pytest.raises(FeedbackError, match="no readable"):
        newest_time_ns(log, outcomes)


def test_segments_order_by_name_with_numeric_sequence(tmp_path: Path) -> None:
    """A pid's segment 10 is read after its segment 9 (same opening time): it loses duplicates."""
    write_segment(
        tmp_path, segment_name("decisions", START, 7, 10), [decision("x", 0.0, score=0.9)]
    )
    write_segment(tmp_path, segment_name("decisions", START, 7, 9), [decision("x", 0.0, score=0.2)])
    log = read_decision_log(tmp_path, feature_count=FEATURES)
    assert log.frame["score"].tolist() == [0.2]
    assert log.duplicates == 1


def test_only_segments_of_the_kind_are_read(tmp_path: Path) -> None:
    """Other files in the directory (notes, temporaries, the other log's segments) are
    ignored; a `decisions-*.jsonl` copy an operator named so is read too."""
    write_segment(tmp_path, segment_name("decisions", START, 1, 0), [decision("a", 0.0)])
    write_segment(tmp_path, segment_name("outcomes", START, 1, 0), [outcome("a", True, 1.0)])
    write_segment(tmp_path, "decisions-backup.jsonl", [decision("b", 0.0)])
    (tmp_path / "README.txt").write_text("not a segment\n")
    (tmp_path / "decisions-partial.jsonl.tmp").write_text("garbage\n")
    log = read_decision_log(tmp_path, feature_count=FEATURES)
    assert (len(log), log.segments, log.skipped_lines) == (2, 2, 0)
    assert sorted(log.frame["transaction_id"]) == ["a", "b"]


def test_descriptive_fields_of_another_type_cost_no_line(tmp_path: Path) -> None:
    """A hand-edited or older line whose merchant, MCC, entry mode or log time has another
    type still trains, with those fields read as not known; a required field of another
    type still costs the line."""
    odd = decision("odd", 0.0) | {
        "merchant_id": None,
        "mcc": 5411.0,
        "entry_mode": "CHIP",
        "logged_at": None,
    }
    broken = decision("broken", 0.0) | {"amount": "12.50"}
    write_segment(tmp_path, segment_name("decisions", START, 1, 0), [odd, broken])
    log = read_decision_log(tmp_path, feature_count=FEATURES)
    assert (len(log), log.skipped_lines) == (1, 1)
    row = log.frame.iloc[0]
    assert (row["merchant_id"], row["mcc"], row["entry_mode"]) == ("", -1, 0)


def test_missing_directory_is_a_feedback_error(tmp_path: Path) -> None:
    """A log directory that does not exist raises FeedbackError naming it."""
    with pytest.raises(FeedbackError, match="does not exist"):
        read_decision_log(tmp_path / "absent", feature_count=FEATURES)
    with pytest.raises(FeedbackError, match="does not exist"):
        read_outcomes(tmp_path / "absent")


def test_directory_without_segments_is_a_feedback_error(tmp_path: Path) -> None:
    """A directory holding no segment of the kind raises FeedbackError."""
    (tmp_path / "outcomes-2026-09-01.txt").write_text("")
    with pytest.raises(FeedbackError, match="no outcomes-"):
        read_outcomes(tmp_path)


def test_outcomes_read_sorted_by_report_time(tmp_path: Path) -> None:
    """Outcomes from several segments sort by reported_at, keeping file order among ties;
    torn lines and report times out of range are skipped and counted."""
    directory = tmp_path / "outcomes"
    write_segment(
        directory,
        segment_name("outcomes", START, 1, 0),
        [outcome("late", True, 9.0), outcome("tie1", True, 2.0)],
        tail='{"transaction_id": "to',
    )
    write_segment(
        directory,
        segment_name("outcomes", at(1), 2, 0),
        [
            outcome("tie2", False, 2.0),
            outcome("early", False, 1.0),
            outcome("far", True, 3.0) | {"reported_at": "9026-01-01T00:00:00+00:00"},
        ],
    )
    outcomes = read_outcomes(directory)
    frame = outcomes.frame
    assert frame["transaction_id"].tolist() == ["early", "tie1", "tie2", "late"]
    assert frame["is_fraud"].tolist() == [False, True, False, True]
    assert frame["reported_ns"].tolist() == [ns(at(hours)) for hours in (1, 2, 2, 9)]
    assert (frame["received_ns"] - frame["reported_ns"]).eq(10**9).all()
    assert (outcomes.skipped_lines, outcomes.segments) == (2, 2)


@pytest.mark.parametrize(
    ("as_of_hours", "expected"),
    [(10.0, UNKNOWN_LABEL), (30.0, 0), (40.0, 1)],
)
def test_fraud_is_invisible_before_its_report(
    tmp_path: Path, as_of_hours: float, expected: int
) -> None:
    """Leakage rule: a fraud reported at 40h is unknown at 10h (delay not passed) and genuine
    at 30h (the 24h delay passed in silence: what a model trained then would have seen);
    only from its report on is it fraud."""
    assert label_of(0.0, [outcome("a", True, 40.0)], as_of_hours, tmp_path) == expected


def test_genuine_by_silence_needs_the_full_delay(tmp_path: Path) -> None:
    """Without any report, a transaction turns genuine exactly when its label delay has passed."""
    outcomes = write_outcomes(tmp_path, [outcome("other", True, 1.0)])
    ids = np.array(["a", "a"], dtype=object)
    events = np.array([ns(at(0)), ns(at(0)) + 1], dtype=np.int64)
    found = labels_as_of(ids, events, outcomes, as_of_ns=ns(at(24)), label_delay_ns=DELAY_NS)
    assert found.tolist() == [0, UNKNOWN_LABEL]


def test_genuine_report_counts_before_the_delay(tmp_path: Path) -> None:
    """An explicit genuine report labels the transaction at once, without waiting for the delay."""
    assert label_of(0.0, [outcome("a", False, 2.0)], 3.0, tmp_path) == 0


@pytest.mark.parametrize(
    ("first", "as_of_hours", "expected"),
    [(True, 3.0, 1), (True, 6.0, 0), (False, 3.0, 0), (False, 6.0, 1)],
)
def test_corrections_apply_in_report_order(
    tmp_path: Path, first: bool, as_of_hours: float, expected: int
) -> None:
    """A correction reported at 5h replaces the outcome of 2h, only once it has been reported."""
    records = [outcome("a", not first, 5.0), outcome("a", first, 2.0)]
    assert label_of(0.0, records, as_of_hours, tmp_path) == expected


def test_same_report_time_takes_the_later_line(tmp_path: Path) -> None:
    """Two outcomes reported at the same instant: the one logged later wins."""
    records = [outcome("a", True, 2.0), outcome("a", False, 2.0)]
    assert label_of(0.0, records, 3.0, tmp_path) == 0


def test_transaction_after_as_of_is_unknown(tmp_path: Path) -> None:
    """A transaction whose event is after the as-of moment is unknown, even if reported earlier."""
    assert label_of(10.0, [outcome("a", True, 1.0)], 5.0, tmp_path) == UNKNOWN_LABEL


def test_labels_logged_decisions_from_logged_outcomes(
    decision_log: LoggedDecisions, tmp_path: Path
) -> None:
    """Both logs read from files label together; outcomes of unlogged transactions go unused."""
    outcomes = write_outcomes(
        tmp_path / "outcomes",
        [outcome("b", True, 4.0), outcome("ghost", True, 4.0), outcome("c", False, 25.5)],
    )
    assert labels(decision_log, outcomes, 25.0) == [0, 1, UNKNOWN_LABEL, UNKNOWN_LABEL]
    assert labels(decision_log, outcomes, 25.5) == [0, 1, 0, UNKNOWN_LABEL]


def test_label_outcomes_says_when_each_label_became_known(
    decision_log: LoggedDecisions, tmp_path: Path
) -> None:
    """Known at the deciding report, at event plus delay when silent, never when unknown."""
    outcomes = write_outcomes(tmp_path / "outcomes", [outcome("b", True, 4.0)])
    known = label_outcomes(
        decision_log.frame["transaction_id"].to_numpy(),
        decision_log.frame["event_ns"].to_numpy(),
        outcomes,
        as_of_ns=ns(at(25.5)),
        label_delay_ns=DELAY_NS,
    ).known_ns
    assert known.tolist() == [ns(at(24)), ns(at(4)), NOT_KNOWN_NS, NOT_KNOWN_NS]


def test_label_outcomes_tells_reported_labels_from_silent_ones(tmp_path: Path) -> None:
    """A transaction counts as reported only once an outcome, fraud or genuine, was reported."""
    outcomes = write_outcomes(tmp_path, [outcome("fraud", True, 2.0), outcome("fine", False, 5.0)])
    ids = np.array(["fraud", "fine", "silent"], dtype=object)
    events = np.full(len(ids), ns(at(0)), dtype=np.int64)

    def reported(as_of_hours: float) -> list[bool]:
        found = label_outcomes(
            ids, events, outcomes, as_of_ns=ns(at(as_of_hours)), label_delay_ns=DELAY_NS
        )
        return list(found.reported.tolist())

    assert reported(4) == [True, False, False]
    assert reported(5) == [True, True, False]


def test_newest_time_is_the_latest_event_or_report(
    decision_log: LoggedDecisions, tmp_path: Path
) -> None:
    """The default as-of moment is the newest event or report time; receipt times do not count."""
    outcomes = write_outcomes(tmp_path / "outcomes", [outcome("a", True, 1.0)])
    assert newest_time_ns(decision_log, outcomes) == ns(at(3))
    later = write_outcomes(tmp_path / "later", [outcome("a", True, 7.0)])
    assert newest_time_ns(decision_log, later) == ns(at(7))


def test_the_feature_settings_fingerprint_is_read_and_empty_when_absent(tmp_path: Path) -> None:
    """A line's `feature_config` lands in the frame; a line without one reads as ""; one
    that is not text is skipped."""
    directory = tmp_path / "decisions"
    marked = decision("m", 0.0) | {"feature_config": "0123456789ab"}
    unmarked = decision("u", 1.0)
    unmarked.pop("feature_config", None)
    broken = decision("b", 2.0) | {"feature_config": 7}
    write_segment(directory, segment_name("decisions", at(0), 100, 0), [marked, unmarked, broken])
    log = read_decision_log(directory, feature_count=FEATURES)
    assert log.frame["feature_config"].tolist() == ["0123456789ab", ""]
    assert log.skipped_lines == 1
