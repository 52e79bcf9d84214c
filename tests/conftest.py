"""Shared fixtures: a small simulated history and a model trained on it by the real pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The serving-parity history and its offline scores, once for the modules that feed it.
from tests.parity_history import champion_config as champion_config
from tests.parity_history import history_batches as history_batches
from tests.parity_history import offline as offline
from tests.parity_history import unseen_history as unseen_history
from tests.redis_server import RedisServer
from tests.server_process import ServerProcess, server_files
from training.config import load_settings
from training.model_build.pipeline import train
from training.simulation.history_files import write_transactions
from training.simulation.params import SimulationParams
from training.simulation.simulate import simulate

# A booster that trains in seconds and gates a small history can pass; tests add the
# periods that fit their data. One thread: on tens of thousands of rows a second one saves
# little, and with the box busy (servers, a Dask cluster, another test process) LightGBM's
# two OpenMP threads wait for each other spinning: 17-22 s of CPU a fit instead of 1.
SMALL_MODEL = """\
[booster]
max_rounds = 60
early_stopping_rounds = 20
min_child_samples = 20
max_bin = 255
num_threads = 1

[gates]
min_auc_roc = 0.6
min_average_precision = 0.05
"""

# Long enough for warm-up, train, gap, validation, test.
SMALL_CONFIG = (
    """\
[split]
warmup_days = 14
validation_days = 10
test_days = 10

"""
    + SMALL_MODEL
)


@dataclass(frozen=True)
class TrainedModel:
    registry: Path
    version: str
    config: Path
    history: Path


@pytest.fixture(scope="session")
def small_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 days of 400 simulated cards, every optional field filled."""
    path = tmp_path_factory.mktemp("history") / "history.csv"
    params = SimulationParams(customers=400, terminals=800, days=60, seed=11)
    write_transactions(simulate(params), path)
    return path


@pytest.fixture(scope="session")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "train.toml"
    path.write_text(SMALL_CONFIG)
    return path


@pytest.fixture(scope="session")
def trained_model(
    tmp_path_factory: pytest.TempPathFactory, small_history: Path, small_config: Path
) -> TrainedModel:
    """A champion published by the real training pipeline into a fresh registry."""
    registry = tmp_path_factory.mktemp("registry")
    result = train(small_history, registry, load_settings(small_config))
    return TrainedModel(registry, result.manifest.version, small_config, small_history)


@pytest.fixture(scope="session")
def other_model(
    tmp_path_factory: pytest.TempPathFactory, small_history: Path, small_config: Path
) -> TrainedModel:
    """Another model of the same features, trained with other hyperparameters: its scores
    differ from `trained_model`'s. Published in a registry of its own."""
    registry = tmp_path_factory.mktemp("other_registry")
    settings = load_settings(small_config)
    booster = settings.booster.model_copy(update={"num_leaves": 7, "learning_rate": 0.1})
    result = train(small_history, registry, settings.model_copy(update={"booster": booster}))
    return TrainedModel(registry, result.manifest.version, small_config, small_history)


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[Any]:
    """Start `python -m service` processes, keeping their decision and outcome logs in
    tmp_path rather than the working directory; any still running after the test is killed."""
    processes: list[ServerProcess] = []
    logs = server_files(tmp_path)

    def start(*arguments: str, environment: dict[str, str] | None = None) -> ServerProcess:
        process = ServerProcess(*arguments, environment=logs | (environment or {}))
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test session's own, on a free loopback port; tests that stop
    or pause a server start their own (`RedisServer`)."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis-server, emptied for this test."""
    redis_server.flush()
    return redis_server.url
