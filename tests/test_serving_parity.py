"""Serving parity: the server scores a history exactly as `fraud-train evaluate` does.

A history the model never saw is scored twice: offline by the real `fraud-train evaluate`
command, and online by a real gRPC server fed the way a backend feeds it, each fraud label
reported through ReportOutcome at the moment it becomes known (one label delay after its
transaction, as in training).
"""

from __future__ import annotations

import csv
import queue
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest

from benchmarks.load.history_requests import request_from_row
from service.app import build_scorer
from service.config.settings import BudgetSettings, ServerSettings, ServeSettings
from service.features import FeatureConfig, FeatureEngine
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.grpc_api.client import build_outcome_request
from service.model.registry import Registry
from service.model.store import ModelStore
from tests.conftest import TrainedModel
from tests.service.loopback import LoopbackServer
from training.simulation.history_files import write_transactions
from training.simulation.params import SimulationParams
from training.simulation.simulate import simulate

TOLERANCE = 1e-6
CALL_TIMEOUT = 60.0  # generous: the machine is shared; no check relies on it running out
STREAM_TIMEOUT = 300.0
# Defaults but for the budget: a request falling back on a busy machine would prove nothing.
SETTINGS = ServeSettings(
    server=ServerSettings(host="127.0.0.1", port=0),
    budget=BudgetSettings(server_budget_ms=60_000),
)


@dataclass
class Batch:
    """Transactions sent together, after the outcomes that became known before the first."""

    outcomes: list[scoring_pb2.OutcomeRequest] = field(default_factory=list)
    requests: list[scoring_pb2.ScoreRequest] = field(default_factory=list)


@pytest.fixture(scope="module")
def unseen_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 days of simulated history from another seed than the one the model trained on."""
    path = tmp_path_factory.mktemp("unseen") / "history.csv"
    params = SimulationParams(customers=300, terminals=600, days=40, seed=5)
    write_transactions(simulate(params), path)
    return path


@pytest.fixture(scope="module")
def champion_config(trained_model: TrainedModel) -> FeatureConfig:
    """The feature config the champion was trained with (and so its label delay)."""
    champion = Registry(trained_model.registry).champion()
    assert champion is not None
    return champion[1].feature_config


def test_server_scores_equal_evaluate_scores_with_outcomes_reported_as_they_become_known(
    trained_model: TrainedModel,
    unseen_history: Path,
    champion_config: FeatureConfig,
    tmp_path: Path,
) -> None:
    """Every server score matches `fraud-train evaluate` within 1e-6, and outcomes mattered."""
    scores_file = tmp_path / "scores.csv"
    label_delay = timedelta(seconds=champion_config.label_delay_seconds)
    batches = list(_batches(_history_rows(unseen_history), label_delay))
    store = ModelStore(trained_model.registry, feature_config=champion_config)
    store.load_champion()

    with _start_evaluate(unseen_history, trained_model.registry, scores_file) as offline:
        with _server(store, champion_config) as target:
            online = _score_through(target, batches, report_outcomes=True)
        # A prefix (about 13 days: labels arrive after 7) scores as it does in the full run.
        in_order = [request for batch in batches for request in batch.requests]
        without_outcomes = [Batch(requests=in_order[: len(in_order) // 3])]
        with _server(store, champion_config) as target:
            blind = _score_through(target, without_outcomes, report_outcomes=False)
        _, errors = offline.communicate(timeout=CALL_TIMEOUT)

    assert offline.returncode == 0, errors
    expected = _read_scores(scores_file)
    assert online.keys() == expected.keys()
    mismatches = {
        tx: (online[tx], expected[tx]) for tx in expected if not _close(online, expected, tx)
    }
    assert not mismatches, f"{len(mismatches)} scores differ, e.g. {list(mismatches.items())[:5]}"
    reported = sum(len(batch.outcomes) for batch in batches)
    changed = sum(not _close(online, blind, tx) for tx in blind)
    assert reported > 100, "the history holds frauds whose labels arrive within it"
    assert changed > 100, "reported outcomes change the risk features of later transactions"


def _start_evaluate(history: Path, registry: Path, scores: Path) -> subprocess.Popen[str]:
    """`fraud-train evaluate` scoring every row, running while the server is fed."""
    command = [
        str(Path(sys.executable).with_name("fraud-train")), "evaluate",
        "--data", str(history), "--registry", str(registry),
        "--warmup-days", "0", "--scores-out", str(scores),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _read_scores(path: Path) -> dict[str, float]:
    with path.open(newline="", encoding="utf-8") as file:
        return {row["transaction_id"]: float(row["score"]) for row in csv.DictReader(file)}


def _close(scores: dict[str, float], others: dict[str, float], transaction_id: str) -> bool:
    return abs(scores[transaction_id] - others[transaction_id]) <= TOLERANCE


@contextmanager
def _server(store: ModelStore, config: FeatureConfig) -> Iterator[str]:
    """A loopback server with the loaded champion and fresh feature state; yields its target."""
    server = LoopbackServer(SETTINGS, build_scorer(SETTINGS, FeatureEngine(config), store))
    try:
        yield server.target
    finally:
        server.stop()


def _score_through(
    target: str, batches: Iterable[Batch], *, report_outcomes: bool
) -> dict[str, float]:
    """Scores by transaction id from one ScoreStream; each batch is answered before the
    next batch's outcomes are reported, so every outcome precedes exactly the right swipes."""
    with grpc.insecure_channel(target) as channel:
        stub = scoring_pb2_grpc.FraudScoringStub(channel)
        pending: queue.Queue[scoring_pb2.ScoreRequest | None] = queue.Queue()
        responses = stub.ScoreStream(iter(pending.get, None), timeout=STREAM_TIMEOUT)
        scores: dict[str, float] = {}
        try:
            for batch in batches:
                for outcome in batch.outcomes if report_outcomes else ():
                    stub.ReportOutcome(outcome, timeout=CALL_TIMEOUT)  # raises unless OK
                for request in batch.requests:
                    pending.put(request)
                for _ in batch.requests:
                    response = next(responses)
                    assert response.decision_source == scoring_pb2.DECISION_SOURCE_MODEL, (
                        f"{response.transaction_id}: fallback {response.fallback_reason!r}"
                    )
                    scores[response.transaction_id] = response.score
        finally:
            pending.put(None)
        return scores


def _batches(rows: Iterable[dict[str, str]], label_delay: timedelta) -> Iterator[Batch]:
    """The history in (timestamp, transaction_id) order, cut wherever a fraud label becomes
    known: at or before a transaction's event time, it is reported before that transaction."""
    unknown: deque[tuple[datetime, str]] = deque()  # (reported_at, transaction_id), in order
    batch = Batch()
    for row in sorted(rows, key=_history_order):
        when = datetime.fromisoformat(row["timestamp"])
        known = []
        while unknown and unknown[0][0] <= when:
            reported_at, transaction_id = unknown.popleft()
            known.append(build_outcome_request(transaction_id, True, reported_at))
        if known and batch.requests:
            yield batch
            batch = Batch()
        batch.outcomes += known
        batch.requests.append(request_from_row(row))
        if row["is_fraud"] == "1":
            unknown.append((when + label_delay, row["transaction_id"]))
    yield batch


def _history_rows(history: Path) -> list[dict[str, str]]:
    with history.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _history_order(row: dict[str, str]) -> tuple[datetime, str]:
    return datetime.fromisoformat(row["timestamp"]), row["transaction_id"]
