"""`fraud-train` end to end, as a user runs it: real processes, real files, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.features import FEATURES
from service.model.artifact import NATIVE_MODEL_FILE, ONNX_MODEL_FILE, verify_artifact
from service.model.onnx_scorer import OnnxScorer
from service.model.registry import Registry
from tests.conftest import TrainedModel
from tests.service.registry_copies import copy_registry
from tests.training.retraining.test_server_scrape import MetricsEndpoint
from tests.training.retraining.test_triggers import decision, outcome, write_segment
from training.cli.main import build_parser, main

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
    for command in ("simulate", "train", "evaluate", "backtest", "retrain", "config", "registry"):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([command, "--help"])
        assert exited.value.code == 0
        assert "--" in capsys.readouterr().out


# Looks every 10 ms, no schedule, no live precision: a look only reads the servers' metrics.
FAST_LOOKS = """
[triggers]
check_seconds = 0.01
schedule_hours = 0
precision_floor = 0
"""


@dataclass(frozen=True)
class RetrainPaths:
    """A registry with a champion, log directories, and the settings file, for `retrain`."""

    registry: Path
    decisions: Path
    outcomes: Path
    config: Path

    def args(self, *extra: str | Path) -> list[str]:
        """`fraud-train retrain` arguments naming these paths, then `extra`."""
        return [
            "retrain", "--registry", str(self.registry), "--decisions", str(self.decisions),
            "--outcomes", str(self.outcomes), "--config", str(self.config), *map(str, extra),
        ]  # fmt: skip


@pytest.fixture
def retrain_paths(tmp_path: Path, trained_model: TrainedModel) -> RetrainPaths:
    """A copy of the trained registry, and logs of one champion decision later reported as
    fraud: a retrain reads them and declines for want of new fraud reports."""
    config = tmp_path / "retrain.toml"
    config.write_text(trained_model.config.read_text() + FAST_LOOKS)
    return RetrainPaths(
        copy_registry(trained_model, tmp_path / "registry"),
        write_segment(tmp_path / "decisions", "decisions", [decision("t1", 1)]),
        write_segment(tmp_path / "outcomes", "outcomes", [outcome("t1", 2)]),
        config,
    )


@pytest.fixture
def endpoint() -> Iterator[MetricsEndpoint]:
    """A metrics endpoint on 127.0.0.1, stopped after the test."""
    served = MetricsEndpoint()
    yield served
    served.close()


def exit_code(argv: list[str]) -> int:
    """What `fraud-train` exits with: main's result, or the code of argparse's SystemExit."""
    try:
        return main(argv)
    except SystemExit as exited:
        return int(exited.code or 0)


WATCH = ("--watch", "--max-checks", "1")


@pytest.mark.parametrize("mode", [(), WATCH], ids=["once", "watch"])
def test_retrain_without_a_champion_exits_2(retrain_paths, tmp_path, mode, capsys):
    """An empty registry: exit 2 naming the missing champion, with or without --watch."""
    empty = tmp_path / "empty-registry"
    argv = [*retrain_paths.args(*mode), "--registry", str(empty)]

    assert exit_code(argv) == 2
    assert f"{empty} has no champion" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [(), WATCH], ids=["once", "watch"])
def test_retrain_with_a_missing_decision_directory_exits_2(retrain_paths, tmp_path, mode, capsys):
    """A decision log directory that does not exist: exit 2 naming it, with or without --watch."""
    missing = tmp_path / "no-such-directory"

    assert exit_code([*retrain_paths.args(*mode), "--decisions", str(missing)]) == 2
    assert f"{missing} does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("as_of", "message"),
    [
        ("2026-09-01T00:00", "needs a time zone"),
        ("yesterday", "is not an ISO 8601 time"),
    ],
)
def test_retrain_as_of_must_be_an_iso_time_with_a_zone(retrain_paths, as_of, message, capsys):
    """--as-of without a zone, or not a time at all, is a usage error (exit 2)."""
    assert exit_code(retrain_paths.args("--as-of", as_of)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "option", [("--as-of", "2026-09-01T00:00Z"), ("--report", "report.json")], ids=str
)
def test_watch_refuses_the_options_of_a_single_retrain(retrain_paths, option, capsys):
    """--as-of and --report belong to one retrain, not to a loop: exit 2, nothing looked at."""
    assert exit_code(retrain_paths.args(*WATCH, *option)) == 2
    stderr = capsys.readouterr().err
    assert f"{option[0]} cannot be combined with --watch" in stderr
    assert "look 1" not in stderr


@pytest.mark.parametrize("count", ["0", "-3", "two"])
def test_max_checks_must_be_a_positive_whole_number(retrain_paths, count, capsys):
    """--max-checks 0 (or negative, or not a number) is a usage error (exit 2)."""
    assert exit_code(retrain_paths.args("--watch", "--max-checks", count)) == 2
    assert "--max-checks" in capsys.readouterr().err


def test_max_checks_without_watch_is_a_usage_error(retrain_paths, capsys):
    """--max-checks bounds a loop: given to a single retrain, it is refused (exit 2)."""
    assert exit_code(retrain_paths.args("--max-checks", "3")) == 2
    assert "--max-checks only applies with --watch" in capsys.readouterr().err


def test_a_report_in_a_missing_directory_exits_2_before_any_work(retrain_paths, tmp_path, capsys):
    """--report into a directory that does not exist is refused before the logs are read:
    no retrain runs, none is recorded in the registry history."""
    missing = tmp_path / "no-such-directory"
    history_before = Registry(retrain_paths.registry).history()

    assert exit_code(retrain_paths.args("--report", missing / "report.json")) == 2
    stderr = capsys.readouterr().err
    assert f"directory {missing} does not exist" in stderr
    assert "reading the decision log" not in stderr
    assert Registry(retrain_paths.registry).history() == history_before


def test_a_report_that_cannot_be_written_warns_and_keeps_the_exit_code(
    retrain_paths, tmp_path, capsys
):
    """A report path that fails at writing time (here a link into a vanished directory) is
    a warning: the decline's exit code 4 and its message stand."""
    report = tmp_path / "report.json"
    report.symlink_to(tmp_path / "vanished" / "report.json")

    assert exit_code(retrain_paths.args("--report", report)) == 4
    stderr = capsys.readouterr().err
    assert f"warning: report not written to {report}" in stderr
    assert "nothing published" in stderr


def test_a_signal_during_a_look_ends_the_watch_after_that_look(retrain_paths, endpoint, capsys):
    """SIGTERM while a look reads the servers: the look finishes, the loop ends (exit 0), and
    the handlers in place before are back."""
    endpoint.on_request = lambda: os.kill(os.getpid(), signal.SIGTERM)
    handlers_before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    code = exit_code(
        retrain_paths.args("--watch", "--max-checks", 2, "--metrics-url", endpoint.url)
    )

    assert code == 0
    stderr = capsys.readouterr().err
    assert "promotion: " in stderr
    assert "watch ended: 1 looks" in stderr
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers_before


def test_a_second_signal_interrupts_the_look_under_way(retrain_paths, endpoint, capsys):
    """SIGTERM then SIGINT while a look reads the servers: the look is cut short, exit 130."""

    def signal_twice() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)

    endpoint.on_request = signal_twice

    code = exit_code(
        retrain_paths.args("--watch", "--max-checks", 2, "--metrics-url", endpoint.url)
    )

    assert code == 130
    stderr = capsys.readouterr().err
    assert "interrupted" in stderr
    assert "promotion: " not in stderr
