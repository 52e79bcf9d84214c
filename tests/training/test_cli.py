"""`fraud-train` end to end, as a user runs it: real processes, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.artifact import NATIVE_MODEL_FILE, ONNX_MODEL_FILE, verify_artifact
from service.features import FEATURES
from service.onnx_model import OnnxScorer
from service.registry import Registry
from tests.conftest import TrainedModel
from training.cli import build_parser

FRAUD_TRAIN = str(Path(sys.executable).with_name("fraud-train"))


def run(*args: str | Path | int, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [FRAUD_TRAIN, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        pytest.fail(f"fraud-train {args[0]} exited {result.returncode}: {result.stderr}")
    return result


def test_simulate_train_publish_evaluate(tmp_path: Path, small_config: Path):
    """simulate, train and evaluate on another seed: a verified champion and the metrics."""
    history = tmp_path / "history.csv"
    run("simulate", "--out", history, "--customers", 300, "--terminals", 600, "--days", 60)
    registry = tmp_path / "models"
    trained = run("train", "--data", history, "--registry", registry, "--config", small_config)
    version = trained.stdout.strip()
    models = Registry(registry)
    assert models.alias("champion") == version
    manifest = verify_artifact(models.artifact_dir(version))
    assert manifest.feature_names == [feature.name for feature in FEATURES]
    assert {"validation", "test"} <= manifest.metrics.keys()
    assert all(gate.passed for gate in manifest.gates)

    unseen = tmp_path / "unseen.csv"
    run("simulate", "--out", unseen, "--customers", 300, "--terminals", 600, "--days", 45,
        "--seed", 99)  # fmt: skip
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


def test_same_data_and_config_give_the_same_model(trained_model: TrainedModel, tmp_path: Path):
    """Training is reproducible: the same history and config give byte-identical models."""
    registry = tmp_path / "again"
    trained = run(
        "train", "--data", trained_model.history, "--registry", registry,
        "--config", trained_model.config, "--no-promote",
    )  # fmt: skip
    again = Registry(registry).artifact_dir(trained.stdout.strip())
    first = Registry(trained_model.registry).artifact_dir(trained_model.version)
    for name in (ONNX_MODEL_FILE, NATIVE_MODEL_FILE):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name
    assert Registry(registry).alias("champion") is None


def test_failed_gate_exits_3_and_publishes_nothing(trained_model: TrainedModel, tmp_path: Path):
    """An unreachable metric floor fails the gate with its name and shortfall; no artifact."""
    config = tmp_path / "strict.toml"
    config.write_text(
        trained_model.config.read_text().replace("min_auc_roc = 0.6", "min_auc_roc = 0.9999")
    )
    registry = tmp_path / "models"
    result = run(
        "train", "--data", trained_model.history, "--registry", registry, "--config", config,
        check=False,
    )  # fmt: skip
    assert result.returncode == 3
    assert "floor:auc_roc" in result.stderr
    assert "short by" in result.stderr
    assert Registry(registry).versions() == []


def test_bad_row_exits_2_naming_row_and_column(tmp_path: Path):
    """A negative amount stops training with the row and column, before any work is done."""
    data = tmp_path / "bad.csv"
    data.write_text(
        "transaction_id,timestamp,card_id,terminal_id,amount,is_fraud\n"
        "a,2024-01-01T10:00:00Z,card1,t1,10.00,0\n"
        "b,2024-01-01T10:05:00Z,card1,t1,-3.50,0\n"
    )
    result = run("train", "--data", data, "--registry", tmp_path / "models", check=False)
    assert result.returncode == 2
    assert "line 3" in result.stderr
    assert "amount" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_exits_2_naming_the_setting(tmp_path: Path, small_history: Path):
    """An invalid setting is refused with its dotted name."""
    config = tmp_path / "bad.toml"
    config.write_text("[booster]\nlearning_rate = -1\n")
    result = run("train", "--data", small_history, "--config", config, check=False)
    assert result.returncode == 2
    assert "booster.learning_rate" in result.stderr


def test_registry_promote_list_and_rollback(trained_model: TrainedModel, tmp_path: Path):
    """A second version promoted by hand, listed, then rolled back to the first."""
    registry = tmp_path / "models"
    first = run(
        "train", "--data", trained_model.history, "--registry", registry,
        "--config", trained_model.config,
    ).stdout.strip()  # fmt: skip
    second = run(
        "train", "--data", trained_model.history, "--registry", registry,
        "--config", trained_model.config, "--no-promote",
    ).stdout.strip()  # fmt: skip
    assert first != second
    run("registry", "promote", second, "--registry", registry)
    listing = run("registry", "list", "--registry", registry).stdout
    assert first in listing
    assert second in listing
    run("registry", "promote", first, "--alias", "challenger", "--registry", registry)
    promoted = run("registry", "promote", "challenger", "--registry", registry)
    assert first in promoted.stderr + promoted.stdout
    assert Registry(registry).alias("champion") == first
    run("registry", "promote", second, "--registry", registry)
    rolled = run("registry", "rollback", "--registry", registry, "--reason", "bad canary")
    assert rolled.stdout.strip() == first
    assert Registry(registry).alias("champion") == first
    assert any(entry.reason == "bad canary" for entry in Registry(registry).history())


def test_help_explains_every_command(capsys: pytest.CaptureFixture[str]):
    """The installed command's --help runs; every command documents its options."""
    assert "simulate" in run("--help").stdout
    for command in ("simulate", "train", "evaluate", "backtest", "config", "registry"):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([command, "--help"])
        assert exited.value.code == 0
        assert "--" in capsys.readouterr().out
