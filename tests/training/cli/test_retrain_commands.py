"""`fraud-train retrain`, once and with --watch: its usage errors, exit codes and signals,
run in this process on a copy of a trained registry."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.model.registry import Registry
from tests.conftest import TrainedModel
from tests.service.registry_copies import copy_registry
from tests.training.cli.fraud_train import exit_code
from tests.training.retraining.test_server_scrape import MetricsEndpoint
from tests.training.retraining.test_triggers import decision, outcome, write_segment

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
