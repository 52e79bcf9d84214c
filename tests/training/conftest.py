"""Fixtures of the Dask tests: a history of over 300,000 transactions as one Parquet file and
as daily Parquet files, simulated once per session, and a two-worker LocalCluster."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client

from service.features import FeatureConfig

# The session's history trained again by the CLI, for the tests that each trained it.
from tests.training.second_version import second_version as second_version
from training.data.cluster import open_client, parse_cluster
from training.data.dataset import FeatureTable, build_feature_table
from training.simulation.history_files import write_daily_transactions, write_transactions
from training.simulation.params import SimulationParams
from training.simulation.simulate import simulate

# 316,615 transactions over 90 days: the issue asks for at least 300,000.
LARGE_HISTORY = SimulationParams(customers=1700, terminals=3400, days=90, seed=5)


@dataclass(frozen=True)
class DailyHistory:
    """The same rows as one file and as one file per UTC day."""

    single: Path
    days: Path
    rows: int


@pytest.fixture(scope="session")
def large_daily_history(tmp_path_factory: pytest.TempPathFactory) -> DailyHistory:
    """`LARGE_HISTORY`, with some merchants moved so that a terminal serves several and some
    rows have none: the distributed replay must not rely on a merchant per terminal."""
    frame = _mixed_merchants(simulate(LARGE_HISTORY))
    root = tmp_path_factory.mktemp("large_history")
    write_transactions(frame, root / "history.parquet")
    write_daily_transactions(frame, root / "days")
    return DailyHistory(root / "history.parquet", root / "days", len(frame))


@pytest.fixture(scope="session")
def large_single_process_table(large_daily_history: DailyHistory) -> FeatureTable:
    """The large history's features replayed in this process, the reference for the cluster."""
    return build_feature_table(large_daily_history.single, FeatureConfig())


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Client]:
    """A LocalCluster of two worker processes on 127.0.0.1, as `--dask local:2` starts it."""
    with open_client(parse_cluster("local:2")) as client:
        yield client


def _mixed_merchants(frame: pd.DataFrame) -> pd.DataFrame:
    random = np.random.default_rng(3)
    merchants = frame["merchant_id"].to_numpy(dtype=object).copy()
    moved = random.random(len(frame)) < 0.05
    merchants[moved] = random.choice(np.unique(merchants), size=int(moved.sum()))
    merchants[random.random(len(frame)) < 0.03] = ""
    return frame.assign(merchant_id=merchants)
