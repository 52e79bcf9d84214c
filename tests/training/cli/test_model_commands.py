"""`fraud-train simulate`, `train` and `evaluate` end to end, as a user runs them: real
processes, real files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from service.features import FEATURES
from service.model.artifact import NATIVE_MODEL_FILE, ONNX_MODEL_FILE, verify_artifact
from service.model.onnx_scorer import OnnxScorer
from service.model.registry import Registry
from tests.conftest import TrainedModel
from tests.training.cli.fraud_train import FRAUD_TRAIN, run
from tests.training.second_version import SecondVersion


def test_simulate_train_publish_evaluate(tmp_path: Path, small_config: Path):
    """simulate, train and evaluate on another seed: a verified champion and the metrics."""
    unseen = tmp_path / "unseen.csv"
    # Simulated while the model trains: the two share nothing, and a train (one LightGBM
    # thread, a Python replay) keeps one core of two busy.
    simulating = subprocess.Popen(
        [FRAUD_TRAIN, "simulate", "--out", str(unseen), "--customers", "300",
         "--terminals", "600", "--days", "45", "--seed", "99"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        history = tmp_path / "history.csv"
        run("simulate", "--out", history, "--customers", 300, "--terminals", 600, "--days", 60)
        registry = tmp_path / "models"
        trained = run("train", "--data", history, "--registry", registry, "--config", small_config)
        _, simulate_errors = simulating.communicate(timeout=300)
    finally:
        simulating.kill()
    assert simulating.returncode == 0, simulate_errors
    version = trained.stdout.strip()
    models = Registry(registry)
    assert models.alias("champion") == version
    manifest = verify_artifact(models.artifact_dir(version))
    assert manifest.feature_names == [feature.name for feature in FEATURES]
    assert {"validation", "test"} <= manifest.metrics.keys()
    assert all(gate.passed for gate in manifest.gates)

    scores = tmp_path / "scores.csv"
    evaluated = run(
        "evaluate", "--data", unseen, "--registry", registry, "--warmup-days", 20,
        "--scores-out", scores,
    )  # fmt: skip
    metrics = json.loads(evaluated.stdout)
    assert metrics["model_version"] == version
    for key in ("auc_roc", "average_precision", "card_precision_at_100"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["auc_roc"] > 0.7
    lines = scores.read_text().splitlines()
    assert lines[0] == "transaction_id,score"
    assert len(lines) - 1 == metrics["transactions"]


def test_golden_sample_replays_through_the_serving_scorer(trained_model: TrainedModel):
    """The manifest's golden rows score the same through the server's ONNX scorer."""
    models = Registry(trained_model.registry)
    manifest = models.load(trained_model.version)
    scorer = OnnxScorer(models.artifact_dir(trained_model.version) / ONNX_MODEL_FILE, len(FEATURES))
    golden = manifest.golden_sample
    assert len(golden.scores) > 10
    for row, expected in zip(golden.features, golden.scores, strict=True):
        assert scorer.score_one(row) == pytest.approx(expected, abs=1e-6)


def test_same_data_and_config_give_the_same_model(
    trained_model: TrainedModel, second_version: SecondVersion
):
    """Training is reproducible: the same history and config, trained again by the command
    in a process of its own, give byte-identical models; --no-promote leaves the champion."""
    again = Registry(second_version.registry).artifact_dir(second_version.version)
    first = Registry(trained_model.registry).artifact_dir(trained_model.version)
    for name in (ONNX_MODEL_FILE, NATIVE_MODEL_FILE):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name
    assert Registry(second_version.registry).alias("champion") == trained_model.version
