"""`fraud-train train --dask`: the same model as in one process when the fit stays local,
and a gated model of the same quality when `lightgbm.dask` fits it across the workers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from distributed import Client

from service.model.artifact import ONNX_MODEL_FILE
from service.model.registry import Registry
from tests.conftest import SMALL_CONFIG
from tests.training.cli.fraud_train import run
from tests.training.conftest import DailyHistory
from training.config import ClusterFitConfig, load_settings
from training.data.cluster import ClusterSpec
from training.data.dataset import FeatureTable
from training.data.split import split_periods
from training.model_build.candidate import Candidate, ModelData, fit_candidate, period_records
from training.model_build.cluster_fit import plan_fit
from training.model_build.pipeline import train

GIB = 2**30


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "train.toml"
    path.write_text(SMALL_CONFIG)
    return path


@pytest.fixture(scope="module")
def single_process_data(large_single_process_table: FeatureTable, config_file: Path) -> ModelData:
    table = large_single_process_table
    settings = load_settings(config_file)
    periods = split_periods(
        table.days, table.labels, settings.split, settings.features.label_delay_days
    )
    return ModelData(table.features, table.labels, table.days, table.cards, periods)


@pytest.fixture(scope="module")
def single_process_candidate(single_process_data: ModelData, config_file: Path) -> Candidate:
    """The model one process fits on the large history: what both cluster fits are held to.
    Fitted once; `settings.cluster`, the only setting the tests change, is not read by it."""
    return fit_candidate(single_process_data, load_settings(config_file))


def test_the_fit_stays_local_while_the_matrix_fits_a_worker():
    auto = ClusterFitConfig()

    small = plan_fit(1_000_000, 4 * GIB, auto)
    large = plan_fit(100_000_000, 4 * GIB, auto)

    assert not small.on_cluster
    assert small.reason.startswith("fit: local, the matrix fits one worker (1,000,000 rows")
    assert large.on_cluster
    assert "lightgbm.dask" in large.reason
    assert "4.0 GiB" in large.reason
    assert plan_fit(10, 4 * GIB, ClusterFitConfig(fit="cluster")).on_cluster
    assert not plan_fit(10**9, 4 * GIB, ClusterFitConfig(fit="local")).on_cluster


def test_train_on_a_local_cluster_publishes_the_single_process_model(
    large_daily_history: DailyHistory,
    single_process_candidate: Candidate,
    config_file: Path,
    tmp_path: Path,
):
    """The issue's check: `--dask local:2` on daily files publishes a model passing every
    gate, within 0.005 average precision of one process's. Here the fit stays local on the
    same features, so it is the very same model."""
    registry = tmp_path / "models"
    result = run(
        "train", "--data", large_daily_history.days, "--dask", "local:2",
        "--registry", registry, "--config", config_file,
    )  # fmt: skip

    version = result.stdout.strip()
    manifest = Registry(registry).load(version)
    assert Registry(registry).champion() is not None
    assert manifest.gates
    assert all(gate.passed for gate in manifest.gates)
    assert "fit: local, the matrix fits one worker" in result.stderr
    assert "2 workers" in result.stderr
    single = single_process_candidate
    test_ap = manifest.metrics["test"]["average_precision"]
    assert abs(test_ap - single.metrics["test"]["average_precision"]) <= 0.005
    onnx = (registry / "versions" / version / ONNX_MODEL_FILE).read_bytes()
    assert hashlib.sha256(onnx).digest() == hashlib.sha256(single.onnx_model).digest()
    assert manifest.training_data.rows == large_daily_history.rows
    assert manifest.training_data.source == "2018-04-01.parquet .. 2018-06-29.parquet (90 files)"


def test_a_fit_with_lightgbm_dask_passes_the_gates_at_the_same_quality(
    large_daily_history: DailyHistory,
    single_process_data: ModelData,
    single_process_candidate: Candidate,
    config_file: Path,
    dask_client: Client,
    tmp_path: Path,
):
    """Forced onto the cluster (a running scheduler, by address): rounds chosen on a sample,
    fitted by lightgbm.dask, then the same export, gates and publication."""
    settings = load_settings(config_file)
    settings = settings.model_copy(update={"cluster": ClusterFitConfig(fit="cluster")})
    messages: list[str] = []

    result = train(
        large_daily_history.days,
        tmp_path / "models",
        settings,
        say=messages.append,
        cluster=ClusterSpec(address=dask_client.scheduler.address),
    )

    manifest = result.manifest
    assert all(gate.passed for gate in manifest.gates)
    assert any(message.startswith("fit: on the cluster with lightgbm.dask") for message in messages)
    single = single_process_candidate
    test_ap = manifest.metrics["test"]["average_precision"]
    assert abs(test_ap - single.metrics["test"]["average_precision"]) <= 0.005
    assert manifest.periods == period_records(single_process_data)
    assert manifest.metrics["test"]["transactions"] == single.metrics["test"]["transactions"]
    single_ap = single.metrics["test"]["average_precision"]
    print(f"test AP: lightgbm.dask {test_ap:.4f}, one process {single_ap:.4f}")
