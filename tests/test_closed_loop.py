"""The loop closes, end to end, with real processes: a served champion meets a fraud pattern
it never saw, the drift trigger fires, `fraud-train retrain` builds a candidate from the
server's decision log and outcomes, a person promotes it, the server swaps to it, and the
average precision on later traffic recovers most of the way to a model trained directly on
the new pattern.

The world: one simulated population of cards and terminals. Until `SHIFT_DAY` its cards
only buy in shops (the champion is trained on those days); from then on they also buy
online, and fraudsters test stolen cards and run card-not-present sprees abroad, which the
champion has never seen. Swipes reach the server in time order and frauds are reported
through `ReportOutcome` two days (the label delay) after each purchase.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from service.features import FEATURES
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.model.artifact import ONNX_MODEL_FILE
from service.model.onnx_scorer import OnnxScorer
from service.model.registry import CHALLENGER, Registry
from tests.conftest import SMALL_MODEL
from tests.replay_traffic import TrafficReplay
from tests.server_process import ServerProcess
from training.config import load_settings
from training.model_build.pipeline import train
from training.retraining.feedback import read_decision_log
from training.simulation.history_files import write_transactions
from training.simulation.params import SimulationParams
from training.simulation.simulate import simulate

DAYS = 100
SHIFT_DAY = 45  # online purchases, card testing and card-not-present sprees begin
RETRAIN_DAY = 80  # traffic up to here is what the retrain may learn from
LABEL_DELAY_DAYS = 2

LOOP_CONFIG = (
    SMALL_MODEL
    + f"""
[features]
label_delay_days = {LABEL_DELAY_DAYS}

[split]
warmup_days = 14
validation_days = 7
test_days = 7

[retrain]
evaluation_days = 5
validation_days = 5
min_new_frauds = 10
min_evaluation_frauds = 20

[triggers]
check_seconds = 0.1
schedule_hours = 0
drift_checks = 1
precision_floor = 0
"""
)


@dataclass(frozen=True)
class World:
    traffic: pd.DataFrame  # the rows the server sees, as text, time-sorted
    days: np.ndarray
    champion_history: Path  # shop purchases before the shift: what the champion learned from
    reference_history: Path  # all traffic before RETRAIN_DAY: a model trained on the new pattern
    config: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("world")
    params = SimulationParams(
        customers=250, terminals=500, days=DAYS, seed=5,
        compromised_terminals_per_day=1, compromised_cards_per_day=1,
        card_testing_per_day=3, cnp_sprees_per_day=3,
    )  # fmt: skip
    frame = simulate(params)
    day = (frame["timestamp"] - frame["timestamp"].iloc[0].normalize()).dt.days.to_numpy()
    seen = (day >= SHIFT_DAY) | frame["card_present"].to_numpy(dtype=bool)
    write_transactions(frame[seen], root / "traffic.csv")
    write_transactions(frame[seen & (day < SHIFT_DAY)], root / "champion.csv")
    write_transactions(frame[seen & (day < RETRAIN_DAY)], root / "reference.csv")
    config = root / "loop.toml"
    config.write_text(LOOP_CONFIG)
    traffic = pd.read_csv(root / "traffic.csv", dtype=str, keep_default_na=False)
    return World(traffic, day[seen], root / "champion.csv", root / "reference.csv", config)


def test_a_new_fraud_pattern_is_learned_from_the_servers_own_logs_and_served(
    world: World, tmp_path: Path
) -> None:
    """Drift fires, retrain publishes a better challenger, promotion swaps it in, AP recovers."""
    settings = load_settings(world.config)
    registry = tmp_path / "models"
    champion = train(world.champion_history, registry, settings).manifest.version
    reference = train(world.reference_history, tmp_path / "reference", settings).manifest.version
    decisions, outcomes = tmp_path / "decisions", tmp_path / "outcomes"
    server = ServerProcess(
        "--registry", str(registry), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
        environment={
            "FRAUD_DECISION_LOG__DIRECTORY": str(decisions),
            "FRAUD_STATE__PATH": str(decisions.parent / "state"),
            "FRAUD_OUTCOME_LOG__DIRECTORY": str(outcomes),
            "FRAUD_MODELS__POLL_SECONDS": "0.1",
            "FRAUD_DRIFT__WINDOW": "2000",
            "FRAUD_LOGGING__SAMPLE_RATE": "0",
            # Model answers only, however busy the shared machine: a fallback has no version.
            "FRAUD_BUDGET__SERVER_BUDGET_MS": "5000",
        },
    )  # fmt: skip
    try:
        serving = server.wait_for("serving")
        target = f"127.0.0.1:{serving['port']}"
        metrics_url = f"http://127.0.0.1:{serving['metrics_port']}/metrics"
        replay = TrafficReplay(target, timedelta(days=LABEL_DELAY_DAYS))
        before = replay.send(world.traffic[world.days < RETRAIN_DAY])
        assert set(before.versions.values()) == {champion}

        watch = _fraud_train(
            "retrain", "--watch", "--max-checks", "1", "--registry", str(registry),
            "--config", str(world.config), "--decisions", str(decisions),
            "--outcomes", str(outcomes), "--metrics-url", metrics_url,
        )  # fmt: skip
        assert watch.returncode == 0, watch.stdout + watch.stderr
        challenger = Registry(registry).alias(CHALLENGER)
        assert challenger not in (None, champion), watch.stdout + watch.stderr
        assert challenger is not None
        lineage = Registry(registry).load(challenger).lineage
        assert lineage is not None
        assert lineage.parent_version == champion
        assert "drift" in (lineage.trigger or "")

        promote = _fraud_train(
            "registry", "promote", "challenger", "--registry", str(registry),
            "--reason", "read the retrain report: better on the new online frauds",
        )  # fmt: skip
        assert promote.returncode == 0, promote.stdout + promote.stderr
        _wait_for_model(target, challenger)
        # Nothing was reported since the retrain labelled the log: nothing new to learn.
        again = _fraud_train(
            "retrain", "--registry", str(registry), "--config", str(world.config),
            "--decisions", str(decisions), "--outcomes", str(outcomes),
        )  # fmt: skip
        assert again.returncode == 4, again.stdout + again.stderr
        assert "0 new fraud reports" in again.stderr
        assert "nothing new to learn" in again.stderr

        after = replay.send(world.traffic[world.days >= RETRAIN_DAY])
        assert set(after.versions.values()) == {challenger}
        replay.close()
        server.signal(signal.SIGTERM)  # a clean stop writes the decisions still queued
        assert server.wait() == 0
    finally:
        server.kill()

    later = world.traffic[world.days >= RETRAIN_DAY]
    labels = later["is_fraud"].astype(int).to_numpy()
    served = np.array([after.scores[tx] for tx in later["transaction_id"]])
    logged = read_decision_log(decisions, feature_count=len(FEATURES))
    rows = pd.Index(logged.frame["transaction_id"]).get_indexer(pd.Index(later["transaction_id"]))
    assert (rows >= 0).all()
    features = logged.features[rows]
    figures = {
        "champion": _average_precision(labels, _scores(registry, champion, features)),
        "retrained": _average_precision(labels, served),
        "trained_on_new_pattern": _average_precision(
            labels, _scores(tmp_path / "reference", reference, features)
        ),
    }
    print("average precision on later traffic:", json.dumps(figures))  # the note quotes these
    gain = figures["retrained"] - figures["champion"]
    assert gain > 0.03, figures
    assert gain >= 0.7 * (figures["trained_on_new_pattern"] - figures["champion"]), figures


def _fraud_train(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.cli.main", *arguments],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def _wait_for_model(target: str, version: str, timeout: float = 60.0) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = scoring_pb2_grpc.FraudScoringStub(channel)
        deadline = time.monotonic() + timeout
        while stub.GetModelInfo(scoring_pb2.GetModelInfoRequest()).version != version:
            assert time.monotonic() < deadline, f"the server did not swap to {version}"
            time.sleep(0.1)


def _scores(registry: Path, version: str, features: np.ndarray) -> np.ndarray:
    model = Registry(registry).artifact_dir(version) / ONNX_MODEL_FILE
    return OnnxScorer(model, len(FEATURES)).score_batch(features)


def _average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    return round(float(average_precision_score(labels, scores)), 4)
