"""The serving-parity tests' unseen history and its offline scores, as session fixtures:
tests/test_serving_parity.py, tests/test_redis_parity.py and tests/test_replicas.py feed
the same history, and tests/conftest.py imports these so that it is simulated and scored
by `fraud-train evaluate` once for the three (a fixture imported into each module would be
rebuilt in each).

`fraud-train evaluate` starts as soon as a test asks for its scores' fixture and is read
when first needed, so that it runs while servers are fed.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from service.features import FeatureConfig
from service.model.registry import Registry
from tests.parity_feed import Batch, batches, history_rows
from training.simulation.history_files import write_transactions
from training.simulation.params import SimulationParams
from training.simulation.simulate import simulate

if TYPE_CHECKING:  # tests.conftest imports this module
    from tests.conftest import TrainedModel

EVALUATE_TIMEOUT = 300.0


class OfflineRun:
    """`fraud-train evaluate --scores-out` over an unseen history, started at once and
    read when first needed."""

    def __init__(self, history: Path, registry: Path, scores_file: Path) -> None:
        command = [
            str(Path(sys.executable).with_name("fraud-train")), "evaluate",
            "--data", str(history), "--registry", str(registry),
            "--warmup-days", "0", "--scores-out", str(scores_file),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self._scores_file = scores_file

    @cached_property
    def scores(self) -> dict[str, float]:
        """Scores by transaction id, once the command has finished (failing if it failed)."""
        _, errors = self.process.communicate(timeout=EVALUATE_TIMEOUT)
        assert self.process.returncode == 0, errors
        with self._scores_file.open(newline="", encoding="utf-8") as file:
            return {row["transaction_id"]: float(row["score"]) for row in csv.DictReader(file)}


def simulated_history(tmp_path_factory: pytest.TempPathFactory, params: SimulationParams) -> Path:
    path = tmp_path_factory.mktemp("unseen") / "history.csv"
    write_transactions(simulate(params), path)
    return path


def offline_run(
    history: Path, registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OfflineRun]:
    """An `OfflineRun` of `history` for a fixture to yield; killed if still running."""
    run = OfflineRun(history, registry, tmp_path_factory.mktemp("offline") / "scores.csv")
    yield run
    run.process.kill()  # a no-op once it has finished
    run.process.communicate()


def fed_in_order(history: Path, config: FeatureConfig) -> list[Batch]:
    """`history` as a backend feeds it, labels reported after `config`'s label delay."""
    label_delay = timedelta(seconds=config.label_delay_seconds)
    return list(batches(history_rows(history), label_delay))


@pytest.fixture(scope="session")
def unseen_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 days of simulated history from another seed than the one the model trained on:
    100 cards on 200 terminals, 7,150 transactions and 1,824 fraud labels reported within
    it (8,974 calls fed whole). Each card and terminal sees as many transactions a day as
    with 300 cards on 600 (25,006), which scored three and a half times slower; the fraud
    scenarios draw as many cards and terminals a day, so a third of the transactions are
    frauds."""
    params = SimulationParams(customers=100, terminals=200, days=40, seed=5)
    return simulated_history(tmp_path_factory, params)


@pytest.fixture(scope="session")
def offline(
    trained_model: TrainedModel, unseen_history: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OfflineRun]:
    yield from offline_run(unseen_history, trained_model.registry, tmp_path_factory)


@pytest.fixture(scope="session")
def champion_config(trained_model: TrainedModel) -> FeatureConfig:
    """The feature config the champion was trained with (and so its label delay)."""
    champion = Registry(trained_model.registry).champion()
    assert champion is not None
    return champion[1].feature_config


@pytest.fixture(scope="session")
def history_batches(unseen_history: Path, champion_config: FeatureConfig) -> list[Batch]:
    return fed_in_order(unseen_history, champion_config)
