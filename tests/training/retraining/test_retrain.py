"""`training.retraining.retrain` on real logs: a simulated history's later days written as the
server's
decision log (features replayed through the feature engine, scored by a served champion) and
outcome log (each fraud reported two days after its purchase), then retrained for real."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from service.core.scoring import decision_for
from service.features import FEATURE_ENGINE_VERSION, FEATURES
from service.model.artifact import ONNX_MODEL_FILE, Thresholds, sha256_file, verify_artifact
from service.model.onnx_scorer import OnnxScorer
from service.model.registry import (
    CHALLENGER,
    CHAMPION,
    VERSION_PATTERN,
    HistoryEntry,
    Registry,
    RegistryError,
)
from tests.conftest import SMALL_MODEL
from training.config import TrainSettings, load_settings
from training.data.loading import load_transactions
from training.data.replay import replay_features
from training.model_build.candidate import instant
from training.model_build.gates import GateFailure
from training.model_build.pipeline import train
from training.retraining.feedback import (
    FeedbackError,
    newest_time_ns,
    read_decision_log,
    read_outcomes,
)
from training.retraining.retrain import REPORT_JSON_FILE, REPORT_TEXT_FILE, RetrainResult, retrain
from training.simulation.history_files import write_transactions
from training.simulation.params import SimulationParams
from training.simulation.simulate import simulate

DAYS = 90
LOG_START_DAY = 45  # the champion learned from the days before; the server logged the rest
REPORT_DELAY = timedelta(days=2)
OTHER_ENGINE_ROWS = 300  # the first logged rows, computed by another feature engine version
FALLBACK_ROWS = 50  # the next ones, answered by the fallback without features
TRIGGER = "drift: amount PSI 0.31 > 0.25 on 3 looks"

# The conftest's small booster, with periods that fit the 45 logged days.
RETRAIN_CONFIG = (
    SMALL_MODEL
    + """
[split]
warmup_days = 7
validation_days = 7
test_days = 7

[retrain]
evaluation_days = 7
validation_days = 7
min_new_frauds = 10
min_evaluation_frauds = 20
min_improvement = 0.01
"""
)


@dataclass(frozen=True)
class Logged:
    registry: Path  # holds the weak champion; tests retrain in copies of it
    champion: str
    history: Path  # what the champion learned from: the days before the log
    decisions: Path
    outcomes: Path
    log_start: datetime  # the first logged event
    settings: TrainSettings


@pytest.fixture(scope="session")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """A weak champion trained on the first 45 days, and the next 45 days as the server's
    decision and outcome logs."""
    root = tmp_path_factory.mktemp("retrain")
    params = SimulationParams(customers=300, terminals=600, days=DAYS, seed=5)
    simulated = simulate(params)
    log_start = pd.Timestamp(params.start_date, tz="UTC") + timedelta(days=LOG_START_DAY)
    history = root / "history.csv"
    write_transactions(simulated, root / "all.csv")
    write_transactions(simulated[simulated["timestamp"] < log_start], history)
    (root / "config.toml").write_text(RETRAIN_CONFIG)
    settings = load_settings(root / "config.toml")
    registry = root / "models"
    champion = train(history, registry, _weak(settings)).manifest.version

    frame = load_transactions(root / "all.csv").frame
    later = (frame["timestamp_ns"] >= log_start.value).to_numpy()
    features = replay_features(frame, settings.features)[later]
    artifact = Registry(registry).artifact_dir(champion)
    scorer = OnnxScorer(artifact / ONNX_MODEL_FILE, len(FEATURES))
    served = _Served(champion, scorer, Registry(registry).load(champion).thresholds)
    _write_segments(root / "decisions", "decisions", _decisions(frame[later], features, served))
    _write_segments(root / "outcomes", "outcomes", _outcomes(frame[later]))
    return Logged(
        registry,
        champion,
        history,
        root / "decisions",
        root / "outcomes",
        instant(int(frame["timestamp_ns"][later].iloc[0])),
        settings,
    )


@pytest.fixture(scope="session")
def published(
    logged: Logged, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, RetrainResult]:
    """A retrain from the logs and the champion's history, in a registry of its own."""
    registry = _copy(logged, tmp_path_factory.mktemp("published"))
    result = retrain(
        registry,
        logged.decisions,
        logged.outcomes,
        logged.settings,
        history=logged.history,
        trigger=TRIGGER,
    )
    return registry, result


def test_a_better_candidate_becomes_the_challenger(
    logged: Logged, published: tuple[Path, RetrainResult]
) -> None:
    """A candidate that beats the weak champion is published as challenger, the champion kept."""
    registry, result = published
    assert result.published, result.reason
    models = Registry(registry)
    assert models.alias(CHALLENGER) == result.version
    assert models.alias(CHAMPION) == logged.champion
    entry = models.history()[-1]
    assert (entry.action, entry.alias, entry.version) == ("promote", CHALLENGER, result.version)
    assert entry.reason == result.reason
    assert entry.reason.startswith("retrain: candidate AP ")
    assert entry.reason.endswith(f"frauds); trigger: {TRIGGER}")
    assert not result.waiting_for_labels
    metrics = result.report["metrics"]
    assert metrics["candidate"]["average_precision"] >= (
        metrics["champion"]["average_precision"] + 0.01
    )


def test_the_challenger_records_its_lineage(
    logged: Logged, published: tuple[Path, RetrainResult]
) -> None:
    """The challenger's lineage names its parent, trigger, sources, gates and comparison."""
    registry, result = published
    assert result.version is not None
    manifest = Registry(registry).load(result.version)
    lineage = manifest.lineage
    assert lineage is not None
    assert (lineage.kind, lineage.parent_version, lineage.trigger) == (
        "retrain",
        logged.champion,
        TRIGGER,
    )
    log_source, history_source = lineage.sources
    assert log_source.name == "decision log in decisions/"
    assert log_source.rows == result.report["rows"]["usable"]
    assert history_source.sha256 == sha256_file(logged.history)
    assert lineage.data_start < lineage.data_end <= (lineage.as_of or lineage.data_start)
    assert lineage.gates == manifest.gates
    assert all(gate.passed for gate in lineage.gates)
    assert lineage.comparison is not None
    for model in ("champion", "candidate"):
        assert lineage.comparison[model] == pytest.approx(result.report["metrics"][model])


def test_the_report_is_part_of_the_artifact(published: tuple[Path, RetrainResult]) -> None:
    """retrain-report.json and .txt are checksummed files of the challenger's artifact."""
    registry, result = published
    assert result.version is not None
    artifact = Registry(registry).artifact_dir(result.version)
    files = verify_artifact(artifact).files
    assert {REPORT_JSON_FILE, REPORT_TEXT_FILE} <= files.keys()
    assert json.loads((artifact / REPORT_JSON_FILE).read_text()) == result.report
    assert (artifact / REPORT_TEXT_FILE).read_text() == result.table
    report = result.report
    assert (report["verdict"], report["candidate"]) == ("published as challenger", result.version)
    rates = report["decision_rates"]
    assert set(rates) == {"champion", "candidate", "candidate_at_champion_thresholds", "change"}
    assert rates["change"]["decline_rate"] == pytest.approx(
        rates["candidate"]["decline_rate"] - rates["champion"]["decline_rate"]
    )
    assert len(report["feature_changes"]) == 5
    for heading in ("periods:", "metrics on the evaluation window:", "largest changes"):
        assert heading in result.table


def test_left_out_rows_are_counted_not_used(published: tuple[Path, RetrainResult]) -> None:
    """Logged rows of another engine version, without features, not settled, or declined by
    the champion and never reported are left out and counted."""
    _, result = published
    rows = result.report["rows"]
    assert rows["excluded"]["no_features"] == FALLBACK_ROWS
    assert rows["excluded"]["other_feature_engine"] == OTHER_ENGINE_ROWS
    assert rows["excluded"]["label_not_settled"] > 0
    assert rows["excluded"]["silent_decline"] > 0  # only frauds are reported here
    assert rows["usable"] == rows["logged"] - sum(rows["excluded"].values())


def test_no_new_fraud_reports_publish_nothing(logged: Logged, tmp_path: Path) -> None:
    """As of the log's first day no fraud is reported yet: a decline saying so, nothing new."""
    registry = _copy(logged, tmp_path / "models")
    as_of = logged.log_start + timedelta(days=1)
    result = retrain(registry, logged.decisions, logged.outcomes, logged.settings, as_of=as_of)
    assert not result.published
    assert result.version is None
    assert "0 new fraud reports" in result.reason
    assert "10 needed" in result.reason
    assert _assert_declined(registry, logged, result.reason).version is None
    assert result.report["verdict"] == "declined"
    assert result.reason in result.table
    assert result.waiting_for_labels


def test_an_as_of_after_the_logs_is_refused(logged: Logged, tmp_path: Path) -> None:
    """An as-of later than every logged event and report would call every unreported
    transaction genuine: FeedbackError naming both times, and nothing recorded."""
    registry = _copy(logged, tmp_path / "models")
    newest = pd.Timestamp(
        newest_time_ns(
            read_decision_log(logged.decisions, feature_count=len(FEATURES)),
            read_outcomes(logged.outcomes),
        ),
        tz="UTC",
    )
    as_of = (newest + timedelta(days=1)).to_pydatetime()
    history = Registry(registry).history()
    with pytest.raises(FeedbackError) as refused:
        retrain(registry, logged.decisions, logged.outcomes, logged.settings, as_of=as_of)
    assert as_of.isoformat() in str(refused.value)
    assert newest.isoformat() in str(refused.value)
    assert Registry(registry).history() == history


def test_a_candidate_not_better_by_the_margin_publishes_nothing(
    logged: Logged, tmp_path: Path
) -> None:
    """A candidate short of champion AP + min_improvement is declined, both APs in the reason."""
    registry = _copy(logged, tmp_path / "models")
    settings = _with(logged.settings, "retrain", min_improvement=1.0)
    result = retrain(registry, logged.decisions, logged.outcomes, settings)
    assert not result.published
    assert "candidate AP " in result.reason
    assert "vs champion " in result.reason
    assert "not better by the 1.0000 required" in result.reason
    assert not result.waiting_for_labels
    entry = _assert_declined(registry, logged, result.reason)
    assert entry.version == result.report["candidate"]
    assert entry.version is not None
    assert VERSION_PATTERN.fullmatch(entry.version)
    assert result.report["metrics"]["candidate"]["average_precision"] > 0


def test_a_failed_gate_raises_and_records_a_decline(logged: Logged, tmp_path: Path) -> None:
    """A candidate under a metric floor raises GateFailure and leaves a decline naming the gate."""
    registry = _copy(logged, tmp_path / "models")
    settings = _with(logged.settings, "gates", min_average_precision=1.0)
    with pytest.raises(GateFailure, match="floor:average_precision"):
        retrain(registry, logged.decisions, logged.outcomes, settings, trigger=TRIGGER)
    entry = _assert_declined(registry, logged, Registry(registry).history()[-1].reason)
    assert "floor:average_precision" in entry.reason
    assert entry.reason.endswith(f"; trigger: {TRIGGER}")
    assert entry.version is not None
    assert VERSION_PATTERN.fullmatch(entry.version)


def test_too_few_evaluation_frauds_publish_nothing(logged: Logged, tmp_path: Path) -> None:
    """An evaluation window short of min_evaluation_frauds is declined before any training."""
    registry = _copy(logged, tmp_path / "models")
    settings = _with(logged.settings, "retrain", min_evaluation_frauds=100_000)
    result = retrain(registry, logged.decisions, logged.outcomes, settings)
    assert not result.published
    assert "the evaluation period" in result.reason
    assert "at least 100000" in result.reason
    assert not result.waiting_for_labels
    assert _assert_declined(registry, logged, result.reason).version is None


def test_retrain_needs_a_champion(logged: Logged, tmp_path: Path) -> None:
    """Without a champion to compare with, retrain refuses with a RegistryError."""
    with pytest.raises(RegistryError, match="no champion"):
        retrain(tmp_path, logged.decisions, logged.outcomes, logged.settings)


def test_retrain_needs_a_champion_of_the_same_features(logged: Logged, tmp_path: Path) -> None:
    """A champion built with another feature config cannot be compared: RegistryError."""
    settings = _with(logged.settings, "features", label_delay_days=3.0)
    with pytest.raises(RegistryError, match="reads other features"):
        retrain(_copy(logged, tmp_path / "models"), logged.decisions, logged.outcomes, settings)


def _assert_declined(registry: Path, logged: Logged, reason: str) -> HistoryEntry:
    """The last history entry is a decline with `reason`; nothing published, no alias moved."""
    models = Registry(registry)
    entry = models.history()[-1]
    assert (entry.action, entry.alias, entry.reason) == ("decline", None, reason)
    assert models.versions() == [logged.champion]
    assert models.alias(CHALLENGER) is None
    assert models.alias(CHAMPION) == logged.champion
    return entry


def _weak(settings: TrainSettings) -> TrainSettings:
    """One stump: a champion any real candidate beats, published past floors set to zero."""
    settings = _with(settings, "booster", max_rounds=1, num_leaves=2, early_stopping_rounds=1)
    return _with(settings, "gates", min_auc_roc=0.0, min_average_precision=0.0)


def _with(settings: TrainSettings, section: str, **changes: Any) -> TrainSettings:
    updated = getattr(settings, section).model_copy(update=changes)
    return settings.model_copy(update={section: updated})


def _copy(logged: Logged, target: Path) -> Path:
    return Path(shutil.copytree(logged.registry, target, dirs_exist_ok=True))


@dataclass(frozen=True)
class _Served:
    """The model the server answered with."""

    version: str
    scorer: OnnxScorer
    thresholds: Thresholds


def _decisions(frame: pd.DataFrame, features: np.ndarray, served: _Served) -> list[dict[str, Any]]:
    """The server's decision records of `frame`'s rows (the decision log format)."""
    scores = served.scorer.score_batch(features)
    decisions = [decision_for(float(score), served.thresholds).name for score in scores]
    times = _iso(frame["timestamp_ns"])
    vectors = features.astype(object)
    vectors[np.isnan(features)] = None  # JSON null, as the server writes NaN
    rows = zip(frame.to_dict("records"), vectors.tolist(), times, scores, decisions, strict=True)
    records = []
    for number, (row, vector, time, score, decision) in enumerate(rows):
        fallback = OTHER_ENGINE_ROWS <= number < OTHER_ENGINE_ROWS + FALLBACK_ROWS
        record = {
            "transaction_id": row["transaction_id"],
            "event_time": time,
            "card": row["card_id"],
            "terminal_id": row["terminal_id"],
            "merchant_id": row["merchant_id"],
            "amount": row["amount"],
            "currency": row["currency"],
            "mcc": int(row["mcc"]),
            "entry_mode": int(row["entry_mode"]),
            "card_present": None if row["card_present"] < 0 else bool(row["card_present"]),
            "country": row["country"],
            "score": float(score),
            "decision": decision,
            "source": "MODEL",
            "fallback_reason": "",
            "model_version": served.version,
            "feature_engine_version": FEATURE_ENGINE_VERSION + (number < OTHER_ENGINE_ROWS),
            "features": vector,
            "logged_at": time,
        }
        if fallback:
            record.update(score=0.0, decision="APPROVE", source="FALLBACK", model_version="",
                          fallback_reason="deadline", features=None)  # fmt: skip
        records.append(record)
    return records


def _outcomes(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A fraud report for each fraud, two days after the purchase."""
    frauds = frame[frame["is_fraud"] == 1]
    reported = _iso(frauds["timestamp_ns"] + REPORT_DELAY // timedelta(microseconds=1) * 1000)
    return [
        {"transaction_id": tx, "is_fraud": True, "reported_at": at, "received_at": at}
        for tx, at in zip(frauds["transaction_id"], reported, strict=True)
    ]


def _write_segments(directory: Path, kind: str, records: list[dict[str, Any]]) -> None:
    """Two segments, as two server processes write them."""
    directory.mkdir()
    half = len(records) // 2
    for seq, part in enumerate((records[:half], records[half:]), 1):
        name = f"{kind}-20260901T000000000000Z-{100 + seq}-{seq}.jsonl"
        lines = "".join(json.dumps(record) + "\n" for record in part)
        (directory / name).write_text(lines, encoding="utf-8")


def _iso(timestamp_ns: pd.Series) -> list[str]:
    stamps = pd.to_datetime(timestamp_ns.to_numpy(), utc=True)
    return [stamp.isoformat() for stamp in stamps]
