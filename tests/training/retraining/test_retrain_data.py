"""`training.retraining.retrain_data` on a small labelled log built in memory: which logged rows a
retrain
uses, why it leaves the others out, and how it cuts the used ones into periods."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import pytest
from numpy.typing import NDArray

from service.features import FEATURE_ENGINE_VERSION, FEATURES, FeatureConfig
from training.config import RetrainConfig, SplitConfig, TrainSettings
from training.data.dataset import FeatureTable
from training.data.loading import LoadedTransactions
from training.data.split import NANOS_PER_DAY, day_index
from training.retraining.feedback import LoggedDecisions, LoggedOutcomes
from training.retraining.retrain_data import LabelledLog, assemble, label_log

HOUR_NS = NANOS_PER_DAY // 24
START_NS = int(pd.Timestamp(datetime(2026, 9, 1, tzinfo=UTC)).value)
FIRST_DAY = START_NS // NANOS_PER_DAY
LOG_DAYS = 20
TRAFFIC_HOURS = (1, 7, 13, 19)  # one transaction at each, every day; the one at 7 is a fraud
REPORT_AFTER_NS = HOUR_NS  # each fraud is reported an hour after its purchase
# As of the log's end a row is settled when its event is at or before day 18, 12:00.
AS_OF_NS = START_NS + LOG_DAYS * NANOS_PER_DAY
SETTINGS = TrainSettings(
    features=FeatureConfig(label_delay_days=1.5),  # a gap of two whole days
    split=SplitConfig(warmup_days=2),
    retrain=RetrainConfig(evaluation_days=3, validation_days=2, min_evaluation_frauds=1),
)


def at(day: int, hour: float = 0.0) -> int:
    """Nanoseconds since the epoch of `hour` o'clock on the log's `day` (0: its first)."""
    return START_NS + day * NANOS_PER_DAY + round(hour * HOUR_NS)


def hours_of(event_ns: int) -> float:
    """Hours since the log's start: the first feature of every row, so a row can be traced."""
    return (event_ns - START_NS) / HOUR_NS


class Row(NamedTuple):
    """One logged decision, model-made with this engine's features unless said otherwise."""

    transaction_id: str
    event_ns: int
    decision: str = "APPROVE"
    source: str = "MODEL"
    engine: int = FEATURE_ENGINE_VERSION
    has_features: bool = True
    config: str = SETTINGS.features.fingerprint


def decision_log(rows: list[Row]) -> LoggedDecisions:
    """The log `read_decision_log` would give for `rows`."""
    rows = sorted(rows, key=lambda row: (row.event_ns, row.transaction_id))
    column = pd.DataFrame(rows)
    frame = pd.DataFrame(
        {
            "transaction_id": column["transaction_id"].astype("str"),
            "event_ns": column["event_ns"].astype(np.int64),
            "card": "tok_" + column["transaction_id"].astype("str"),
            "terminal_id": "T1",
            "amount": 10.0,
            "score": 0.5,
            "decision": column["decision"].astype("str"),
            "source": column["source"].astype("str"),
            "model_version": "v1",
            "feature_engine_version": column["engine"].astype(np.int64),
            "feature_config": column["config"].astype("str"),
        }
    )
    has_features = column["has_features"].to_numpy(dtype=np.bool_)
    features = np.full((len(rows), len(FEATURES)), np.nan, dtype=np.float32)
    features[has_features, 0] = [hours_of(row.event_ns) for row in rows if row.has_features]
    return LoggedDecisions(frame, features, has_features, skipped_lines=0, segments=1, duplicates=0)


def outcomes(reports: list[tuple[str, bool, int]]) -> LoggedOutcomes:
    """The outcomes `read_outcomes` would give for (transaction id, is fraud, reported) triples."""
    reported = np.array([report[2] for report in reports], dtype=np.int64)
    frame = pd.DataFrame(
        {
            "transaction_id": pd.Series([report[0] for report in reports], dtype="str"),
            "is_fraud": np.array([report[1] for report in reports], dtype=np.bool_),
            "reported_ns": reported,
            "received_ns": reported,
        }
    )
    sorted_frame = frame.sort_values("reported_ns", kind="stable").reset_index(drop=True)
    return LoggedOutcomes(sorted_frame, skipped_lines=0, segments=1)


def traffic() -> list[Row]:
    """Four model-approved transactions a day for LOG_DAYS days."""
    return [
        Row(f"d{day}h{hour}", at(day, hour)) for day in range(LOG_DAYS) for hour in TRAFFIC_HOURS
    ]


def fraud_reports(rows: list[Row]) -> list[tuple[str, bool, int]]:
    """A fraud report, an hour after the purchase, for each traffic row at 7 o'clock."""
    return [
        (row.transaction_id, True, row.event_ns + REPORT_AFTER_NS)
        for row in rows
        if row.transaction_id.endswith("h7")
    ]


def label(
    rows: list[Row],
    reports: list[tuple[str, bool, int]],
    *,
    silent_declines: Literal["exclude", "genuine"] = "exclude",
) -> LabelledLog:
    """`rows` and `reports` labelled as of the log's end with SETTINGS' label delay."""
    return label_log(
        decision_log(rows),
        outcomes(reports),
        as_of_ns=AS_OF_NS,
        feature_config=SETTINGS.features,
        silent_declines=silent_declines,
    )


def days_of(mask: NDArray[np.bool_], days: NDArray[np.int64]) -> list[int]:
    """The log days (0: its first) of the rows in `mask`, each once."""
    return sorted({int(day) - FIRST_DAY for day in days[mask]})


def test_periods_end_with_the_newest_settled_day_after_a_label_delay_gap() -> None:
    """Evaluation is the last evaluation_days up to the newest settled row, validation the days
    before it, then a gap of ceil(label delay) days in no period, training before it."""
    rows = traffic()
    model = assemble(label(rows, fraud_reports(rows)), SETTINGS, log_name="log").model
    periods = model.periods
    # Rows after day 18, 12:00 are not settled: day 18 is the newest with usable rows.
    assert days_of(periods.test, model.days) == [16, 17, 18]
    assert days_of(periods.validation, model.days) == [14, 15]
    assert days_of(periods.train, model.days) == list(range(12))
    gap = (model.days >= FIRST_DAY + 12) & (model.days < FIRST_DAY + 14)
    assert np.count_nonzero(gap) == 2 * len(TRAFFIC_HOURS)
    assert (periods.test_days, periods.validation_days, periods.train_days) == (
        (FIRST_DAY + 16, FIRST_DAY + 19),
        (FIRST_DAY + 14, FIRST_DAY + 16),
        (FIRST_DAY, FIRST_DAY + 12),
    )
    memberships = np.stack([periods.train, periods.validation, periods.test, gap]).astype(int)
    assert (memberships.sum(axis=0) == 1).all()  # every row in exactly one period or the gap


def test_period_summary_counts_rows_and_frauds_per_period() -> None:
    """The summary gives each period's days, rows and frauds, the newest day's settled rows only."""
    rows = traffic()
    summary = assemble(label(rows, fraud_reports(rows)), SETTINGS, log_name="log").summary
    assert summary == {
        "train": {"days": "2026-09-01..2026-09-12", "rows": 48, "frauds": 12},
        "validation": {"days": "2026-09-15..2026-09-16", "rows": 8, "frauds": 2},
        "evaluation": {"days": "2026-09-17..2026-09-19", "rows": 10, "frauds": 3},
    }


def test_history_rows_are_cut_at_the_first_logged_event() -> None:
    """History rows after its warm-up and before the first logged event are trained on, first;
    later ones (the log has them) and warm-up ones are not."""
    rows = traffic()  # the first logged event is on day 0 at 01:00
    history_ns = np.arange(at(-6), at(2) + 1, 6 * HOUR_NS, dtype=np.int64)
    data = assemble(
        label(rows, fraud_reports(rows)), SETTINGS, log_name="log", history=_history(history_ns)
    )
    # The history's first day is -6, its warm-up two days: days -4..-1, and day 0 at 00:00.
    expected = [hours_of(int(event)) for event in history_ns if at(-4) <= event < at(0, 1)]
    assert len(expected) == 4 * 4 + 1
    traced = data.model.features[:, 0]
    np.testing.assert_array_equal(traced[: len(expected)], expected)
    assert (traced[len(expected) :] >= hours_of(at(0, 1))).all()
    log_source, history_source = data.sources
    assert (log_source.name, log_source.rows) == ("log", len(traced) - len(expected))
    assert (history_source.name, history_source.rows) == ("history.csv", len(expected))
    assert data.model.periods.train[: len(expected)].all()


def test_each_left_out_row_is_counted_under_its_first_reason() -> None:
    """Rows without features, of another engine or other feature settings, not settled, or
    silent declines are left out, each counted once, under the first reason that applies; a
    line from before the settings were logged (no fingerprint) is taken as current."""
    other = FEATURE_ENGINE_VERSION + 1
    other_settings = SETTINGS.features.model_copy(update={"small_amount": 5.0}).fingerprint
    odd = [
        Row("no_vector", at(5, 2), has_features=False),
        Row("no_vector_other_engine", at(5, 3), engine=other, has_features=False),
        Row("other_engine", at(5, 4), engine=other),
        Row("other_engine_other_settings", at(5, 6), engine=other, config=other_settings),
        Row("other_settings", at(5, 7), config=other_settings),
        Row("unmarked", at(5, 8), config=""),
        Row("other_engine_unsettled", at(19, 2), engine=other),
        Row("silent_decline", at(5, 5), decision="DECLINE"),
        Row("unsettled_decline", at(19, 3), decision="DECLINE"),
    ]
    rows = traffic()
    log = label(rows + odd, fraud_reports(rows))
    # Unsettled traffic: day 18 at 13 and 19 o'clock, all four of day 19.
    assert log.excluded == {
        "no_features": 2,
        "other_feature_engine": 3,
        "other_feature_config": 1,
        "label_not_settled": 6 + 1,
        "silent_decline": 1,
    }
    assert len(log) == log.logged_rows - sum(log.excluded.values()) == len(rows) - 6 + 1


@pytest.mark.parametrize(
    ("silent_declines", "kept"),
    [
        ("exclude", ["cleared", "confirmed", "review"]),
        ("genuine", ["silent", "reported_later", "cleared", "confirmed", "fallback", "review"]),
    ],
)
def test_declines_without_an_outcome_are_left_out_unless_counted_genuine(
    silent_declines: Literal["exclude", "genuine"], kept: list[str]
) -> None:
    """A decline (the model's or the fallback's: blocked is blocked) with no outcome known as
    of the end is no evidence of a genuine transaction: left out under "exclude"; reported
    declines and reviews stay."""
    rows = [
        Row("silent", at(1, 1), decision="DECLINE"),
        Row("reported_later", at(1, 2), decision="DECLINE"),
        Row("cleared", at(1, 3), decision="DECLINE"),
        Row("confirmed", at(1, 4), decision="DECLINE"),
        Row("fallback", at(1, 5), decision="DECLINE", source="FALLBACK"),
        Row("review", at(1, 6), decision="REVIEW"),
    ]
    reports = [
        ("reported_later", False, AS_OF_NS + 1),
        ("cleared", False, at(2)),
        ("confirmed", True, at(3)),
    ]
    log = label(rows, reports, silent_declines=silent_declines)
    names = {row.event_ns: row.transaction_id for row in rows}
    assert [names[int(event)] for event in log.event_ns] == kept
    assert log.labels.tolist() == [int(name == "confirmed") for name in kept]
    assert log.excluded["silent_decline"] == len(rows) - len(kept)


def test_new_frauds_count_only_frauds_of_usable_rows() -> None:
    """Fraud reports on rows left out (not settled yet, or without features) are nothing new
    to learn; reports on usable rows count when made after the moment asked about."""
    rows = [*traffic(), Row("no_vector", at(5, 2), has_features=False)]
    reports = [*fraud_reports(rows), ("no_vector", True, at(12))]
    log = label(rows, reports)
    # Day 19's fraud is reported but not settled: usable frauds are those of days 0..18.
    assert log.new_frauds(at(0)) == 19
    assert log.new_frauds(at(10)) == 9
    assert log.new_frauds(AS_OF_NS) == 0


def _history(event_ns: NDArray[np.int64]) -> FeatureTable:
    """A replayed history at `event_ns`, its first feature tracing each row, a fraud a day."""
    count = len(event_ns)
    features = np.full((count, len(FEATURES)), np.nan, dtype=np.float32)
    features[:, 0] = [hours_of(int(event)) for event in event_ns]
    ids = np.array([f"h{number}" for number in range(count)], dtype=object)
    loaded = LoadedTransactions(
        frame=pd.DataFrame({"timestamp_ns": event_ns}),
        rejected_rows=0,
        source_sha256="0" * 64,
        source_name="history.csv",
    )
    return FeatureTable(
        source=loaded,
        features=features,
        labels=(np.arange(count) % 4 == 1).astype(np.int8),
        days=day_index(event_ns),
        cards=ids,
        transaction_ids=ids,
    )
