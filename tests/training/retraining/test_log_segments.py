"""The retrain's logs read a segment at a time: from JSON lines or Parquet twins, in this
process or on a two-worker LocalCluster, the same labelled rows in the same order; twins
made only of closed segments, ignored once stale or damaged, deleted with their segments."""

from __future__ import annotations

import json
import shutil
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from distributed import Client

from service.features import FEATURE_ENGINE_VERSION, FEATURES, FeatureConfig
from service.records.schema import RecordKind, segment_name, twin_of
from service.records.segment_log import LogLimits, RecordLog
from training.cli.main import main
from training.retraining.cluster_logs import reading_on_cluster
from training.retraining.feedback import (
    LoggedDecisions,
    LoggedOutcomes,
    SegmentMap,
    map_here,
    read_decision_log,
    read_outcomes,
)
from training.retraining.log_compaction import CLOSED_AFTER_SECONDS, closed_segments, compact
from training.retraining.retrain_data import LabelledLog, label_log

START = datetime(2026, 9, 1, tzinfo=UTC)
DAY = 86_400
WIDTH = len(FEATURES)
# Each writer's segments: the last one, opened today, is still being written.
WRITERS = ("pod-a-1", "pod-b-1")
SEGMENTS_PER_WRITER = 3
ROWS_PER_SEGMENT = 500
KINDS: tuple[RecordKind, RecordKind] = ("decisions", "outcomes")
NOW = (START + timedelta(days=SEGMENTS_PER_WRITER - 1, hours=12)).timestamp()


def _decision(
    number: int, rng: np.random.Generator, *, with_features: bool = True
) -> dict[str, Any]:
    vector: list[float | None] | None = None
    if with_features:
        vector = [float(value) for value in rng.normal(size=WIDTH).astype(np.float32)]
        vector[number % WIDTH] = None  # a missing value
    event = START + timedelta(seconds=number * 97 % (SEGMENTS_PER_WRITER * DAY))
    return {
        "transaction_id": f"tx-{number}",
        "event_time": event.isoformat(timespec="microseconds"),
        "card": f"tok-{number % 40}",
        "terminal_id": f"T-{number % 25}",
        "merchant_id": f"M-{number % 7}",
        "amount": round(float(rng.gamma(2, 30)), 2),
        "currency": "EUR",
        "mcc": 5411,
        "entry_mode": int(number % 3),
        "card_present": None if number % 11 == 0 else bool(number % 2),
        "country": "FR",
        "score": float(rng.random()),
        "decision": ("APPROVE", "REVIEW", "DECLINE")[number % 3],
        "source": "MODEL",
        "fallback_reason": "",
        "model_version": "v1",
        "feature_engine_version": FEATURE_ENGINE_VERSION,
        "features": vector,
        "logged_at": event.isoformat(),
    }


def _write_logs(root: Path) -> tuple[Path, Path]:
    """Six decision segments of two writers, over three days, with what the reader must
    cope with (a deadline answer and its retry in another segment, a torn line, a vector of
    another length, a time out of range), and their outcomes, one fraud corrected."""
    rng = np.random.default_rng(7)
    decisions, outcomes = root / "decisions", root / "outcomes"
    decisions.mkdir(mode=0o700)
    outcomes.mkdir(mode=0o700)
    number = 0
    for day in range(SEGMENTS_PER_WRITER):
        opened = (START + timedelta(days=day, minutes=1)).timestamp()
        for writer in WRITERS:
            host, pid = writer.rsplit("-", 1)
            lines = []
            for _ in range(ROWS_PER_SEGMENT):
                lines.append(_decision(number, rng))
                number += 1
            lines[5]["features"] = [1.0, 2.0]  # another length: no usable vector
            lines[6]["event_time"] = "1500-01-01T00:00:00+00:00"  # beyond nanoseconds
            text = "".join(json.dumps(line) + "\n" for line in lines)
            if day == 1 and writer == WRITERS[0]:
                # The retry of a deadline answer of the day before, with its features.
                retried = _decision(3, np.random.default_rng(3))
                text += json.dumps(retried) + "\n" + '{"transaction_id": "torn'
            name = segment_name("decisions", opened, int(pid), day, host)
            (decisions / name).write_text(text)
            _write_outcomes(outcomes, name.replace("decisions", "outcomes"), lines)
    first = sorted(decisions.glob("*.jsonl"))[0]
    texts = first.read_text().splitlines(keepends=True)
    deadline = json.loads(texts[3])
    deadline["features"] = None  # the deadline answer: logged without features
    texts[3] = json.dumps(deadline) + "\n"
    first.write_text("".join(texts))
    return decisions, outcomes


def _write_outcomes(directory: Path, name: str, lines: list[dict[str, Any]]) -> None:
    reports = []
    for line in lines[::9]:
        if line["event_time"].startswith("1500"):
            continue
        reported = datetime.fromisoformat(line["event_time"]) + timedelta(hours=20)
        at = reported.isoformat()
        fraud = {"transaction_id": line["transaction_id"], "is_fraud": True,
                 "reported_at": at, "received_at": at}  # fmt: skip
        reports.append(fraud)
        if line["transaction_id"].endswith("0"):  # a correction an hour later
            later = (reported + timedelta(hours=1)).isoformat()
            reports.append({**fraud, "is_fraud": False, "reported_at": later, "received_at": later})
    (directory / name).write_text("".join(json.dumps(report) + "\n" for report in reports))


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _write_logs(tmp_path_factory.mktemp("logs"))


def _read(decisions: Path, outcomes: Path, mapper: SegmentMap = map_here) -> tuple[
    LoggedDecisions, LoggedOutcomes, LabelledLog
]:  # fmt: skip
    logged = read_decision_log(decisions, feature_count=WIDTH, map_segments=mapper)
    reported = read_outcomes(outcomes, map_segments=mapper)
    labelled = label_log(
        logged,
        reported,
        as_of_ns=int(pd.Timestamp(NOW, unit="s", tz="UTC").value),
        feature_config=FeatureConfig(label_delay_days=1.0),
        silent_declines="exclude",
    )
    return logged, reported, labelled


def _assert_same(
    left: tuple[LoggedDecisions, LoggedOutcomes, LabelledLog],
    right: tuple[LoggedDecisions, LoggedOutcomes, LabelledLog],
) -> None:
    (decisions, outcomes, labelled), (other_decisions, other_outcomes, other_labelled) = left, right
    pd.testing.assert_frame_equal(decisions.frame, other_decisions.frame)
    assert decisions.features.tobytes() == other_decisions.features.tobytes()
    assert np.array_equal(decisions.has_features, other_decisions.has_features)
    assert (decisions.skipped_lines, decisions.duplicates, decisions.segments) == (
        other_decisions.skipped_lines, other_decisions.duplicates, other_decisions.segments
    )  # fmt: skip
    pd.testing.assert_frame_equal(outcomes.frame, other_outcomes.frame)
    assert outcomes.skipped_lines == other_outcomes.skipped_lines
    assert labelled.features.tobytes() == other_labelled.features.tobytes()
    assert np.array_equal(labelled.labels, other_labelled.labels)
    assert np.array_equal(labelled.event_ns, other_labelled.event_ns)
    assert np.array_equal(labelled.cards, other_labelled.cards)
    assert np.array_equal(labelled.fraud_known_ns, other_labelled.fraud_known_ns)
    assert labelled.excluded == other_labelled.excluded


def test_the_log_is_what_its_lines_say(logs: tuple[Path, Path]) -> None:
    """The reference the other readings are compared with reads what was written: every
    line once, the torn one, the out-of-range time and the retried duplicate left out."""
    decisions, outcomes, labelled = _read(*logs)
    written = len(WRITERS) * SEGMENTS_PER_WRITER * ROWS_PER_SEGMENT
    bad_time = len(WRITERS) * SEGMENTS_PER_WRITER
    assert len(decisions) == written - bad_time
    assert (decisions.skipped_lines, decisions.duplicates) == (1 + bad_time, 1)
    assert decisions.has_features[decisions.frame["transaction_id"] == "tx-3"].all()
    assert 0 < labelled.labels.sum() < len(labelled)
    assert not outcomes.frame["is_fraud"].all()
    assert outcomes.skipped_lines == 0


def test_twins_give_the_same_rows_as_the_json_lines(
    logs: tuple[Path, Path], tmp_path: Path
) -> None:
    """Compacted, the logs read as before, row for row and bit for bit; only closed
    segments get a twin, created 0600."""
    reference = _read(*logs)
    copies = (_copy_tree(logs[0], tmp_path), _copy_tree(logs[1], tmp_path))
    for kind, directory in zip(KINDS, copies, strict=True):
        done = compact(directory, kind, feature_count=WIDTH, clock=lambda: NOW)
        assert (done.written, done.still_open) == (
            len(WRITERS) * (SEGMENTS_PER_WRITER - 1), len(WRITERS)
        )  # fmt: skip
        twins = sorted(directory.glob("*.parquet"))
        assert len(twins) == done.written
        assert all(stat.S_IMODE(twin.stat().st_mode) == 0o600 for twin in twins)
    _assert_same(reference, _read(*copies))
    # Where a twin is current its segment's lines are not read: blanked, at the same size,
    # the closed segments read as before.
    for directory, kind in zip(copies, KINDS, strict=True):
        for segment in closed_segments(directory, kind, NOW)[0]:
            segment.write_bytes(b"\n" * segment.stat().st_size)
    _assert_same(reference, _read(*copies))


def test_a_stale_or_damaged_twin_is_not_read(logs: tuple[Path, Path], tmp_path: Path) -> None:
    """A segment grown since its twin was made, or a torn twin: its JSON lines are read."""
    decisions = _copy_tree(logs[0], tmp_path)
    compact(decisions, "decisions", feature_count=WIDTH, clock=lambda: NOW)
    grown, torn = closed_segments(decisions, "decisions", NOW)[0][:2]
    with grown.open("a") as file:
        file.write(json.dumps(_decision(10**6, np.random.default_rng(1))) + "\n")
    twin = torn.with_name(twin_of(torn.name))
    twin.write_bytes(twin.read_bytes()[:-100])
    logged = read_decision_log(decisions, feature_count=WIDTH)
    assert "tx-1000000" in set(logged.frame["transaction_id"])
    assert len(logged) == len(read_decision_log(logs[0], feature_count=WIDTH)) + 1
    # The next compaction replaces the stale twin; the torn one is rewritten too.
    assert compact(decisions, "decisions", feature_count=WIDTH, clock=lambda: NOW).written == 2


def test_the_cluster_reads_the_same_rows(
    logs: tuple[Path, Path], tmp_path: Path, dask_client: Client
) -> None:
    """`--dask local:2` parses the segments on its workers, JSON lines and twins alike,
    and the labelled rows are the single process's, in the same order."""
    reference = _read(*logs)
    _assert_same(reference, _read(*logs, reading_on_cluster(dask_client).map_segments))
    copies = (_copy_tree(logs[0], tmp_path), _copy_tree(logs[1], tmp_path))
    for kind, directory in zip(KINDS, copies, strict=True):
        compact(directory, kind, feature_count=WIDTH, clock=lambda: NOW)
    _assert_same(reference, _read(*copies, reading_on_cluster(dask_client).map_segments))


def test_retention_deletes_a_twin_with_its_segment(tmp_path: Path) -> None:
    """The server's retention counts twins in the byte budget, deletes each with its segment,
    and deletes twins whose segment is gone."""
    now = time.time()
    names = [segment_name("decisions", now - (3 - age) * DAY, 9, age) for age in range(3)]
    for name in names:
        (tmp_path / name).write_bytes(b"x" * 100)
        (tmp_path / twin_of(name)).write_bytes(b"p" * 100)
    orphan = tmp_path / twin_of(segment_name("decisions", now - 5 * DAY, 8, 0))
    orphan.write_bytes(b"p")
    log: RecordLog[str] = RecordLog(tmp_path, "decisions", _no_lines, LogLimits(max_bytes=450))
    log.close()
    # 600 bytes with the twins (300 without), 450 allowed: the oldest pair goes.
    kept = sorted(path.name for path in tmp_path.iterdir())
    assert kept == sorted([*names[1:], *(twin_of(name) for name in names[1:])])


def test_logs_compact_command(
    logs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fraud-train logs compact` writes the twins and says what it did as JSON; it needs
    a directory, and `--compact` is refused without `--watch`."""
    outcomes = _copy_tree(logs[1], tmp_path)
    assert main(["logs", "compact", "--outcomes", str(outcomes)]) == 0
    done = json.loads(capsys.readouterr().out)
    # Two days ended long before the wall clock of this run: every segment but none open.
    assert done["outcomes"]["written"] >= len(WRITERS) * (SEGMENTS_PER_WRITER - 1)
    with pytest.raises(SystemExit) as refused:
        main(["logs", "compact"])
    assert refused.value.code == 2
    assert main(["logs", "compact", "--decisions", str(tmp_path / "absent")]) == 2
    with pytest.raises(SystemExit) as refused:
        main(["retrain", "--decisions", str(logs[0]), "--outcomes", str(outcomes), "--compact"])
    assert refused.value.code == 2


def test_an_open_segment_is_compacted_once_its_day_has_ended(logs: tuple[Path, Path]) -> None:
    """The latest segment of a writer is closed only an hour after its UTC day ended."""
    day_end = (START + timedelta(days=SEGMENTS_PER_WRITER)).timestamp()
    assert closed_segments(logs[0], "decisions", day_end + CLOSED_AFTER_SECONDS - 1)[1] == 2
    assert closed_segments(logs[0], "decisions", day_end + CLOSED_AFTER_SECONDS)[1] == 0


def _no_lines(_records: object, _written_at: float) -> bytes:
    return b""


def _copy_tree(source: Path, parent: Path) -> Path:
    return Path(shutil.copytree(source, parent / source.name))
