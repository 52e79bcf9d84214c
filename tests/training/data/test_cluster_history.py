"""The replay on a two-worker LocalCluster gives the single-process replay's features, bit
for bit and row for row; the per-file checks run on the workers and name file and row."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client

from service.features import FEATURES, FeatureConfig
from tests.training.conftest import DailyHistory
from tests.training.data.test_history_parts import part_rows, write_parts
from training.data.cluster_history import check_on_cluster, gather_table, replayed_frame
from training.data.dataset import FeatureTable
from training.data.history_parts import load_parts
from training.data.loading import DataError
from training.data.replay import replay_features


def test_cluster_replay_equals_the_single_process_replay_bit_for_bit(
    large_daily_history: DailyHistory, large_single_process_table: FeatureTable, dask_client: Client
):
    config = FeatureConfig()
    single = large_single_process_table.source.frame
    expected = large_single_process_table.features

    started = time.perf_counter()
    history = check_on_cluster(dask_client, large_daily_history.days)
    table = gather_table(dask_client, history, replayed_frame(history, config))
    seconds = time.perf_counter() - started

    assert len(list(large_daily_history.days.glob("*.parquet"))) == 90
    assert history.rows == len(single) == large_daily_history.rows >= 300_000
    assert table.features.shape == expected.shape == (len(single), len(FEATURES))
    assert (table.transaction_ids == single["transaction_id"].to_numpy(dtype=object)).all()
    # Bit patterns, so that NaN equals NaN and -0.0 differs from 0.0.
    assert np.array_equal(table.features.view(np.uint32), expected.view(np.uint32))
    assert np.nanmax(np.abs(table.features.astype(np.float64) - expected)) == 0
    assert (table.labels == single["is_fraud"].to_numpy()).all()
    assert (table.cards == single["card_id"].to_numpy(dtype=object)).all()
    no_merchant = single["merchant_id"].to_numpy(dtype=object) == ""
    assert 0 < no_merchant.sum() < len(single)  # both branches of the merchant columns ran
    print(f"cluster check and replay of {history.rows} transactions: {seconds:.1f} s")


def test_a_bad_row_stops_the_cluster_run_naming_its_file_and_row(
    tmp_path: Path, dask_client: Client
):
    second = part_rows(2, 4)
    second[2]["amount"] = -3.0
    days = write_parts(tmp_path / "days", {1: part_rows(1, 3), 2: second})

    with pytest.raises(DataError) as raised:
        check_on_cluster(dask_client, days)

    assert str(raised.value).startswith(
        "2018-04-02.parquet: 0-based row index 2, column amount: negative"
    )


def test_a_file_level_problem_on_a_worker_reaches_the_command(tmp_path: Path, dask_client: Client):
    days = write_parts(tmp_path / "days", {1: part_rows(1, 3)})
    pd.DataFrame({"transaction_id": ["x"]}).to_parquet(days / "2018-04-02.parquet")

    with pytest.raises(DataError, match=r"2018-04-02\.parquet: missing required column"):
        check_on_cluster(dask_client, days)


def test_cluster_rejects_are_the_single_process_rejects(tmp_path: Path, dask_client: Client):
    first, second = part_rows(1, 3), part_rows(2, 4)
    first[0]["card_id"] = ""
    second[3]["amount"] = -3.0
    second[1]["transaction_id"] = "t1-2"
    days = write_parts(tmp_path / "days", {1: first, 2: second})
    on_cluster, in_process = tmp_path / "cluster.csv", tmp_path / "process.csv"

    history = check_on_cluster(dask_client, days, rejects_path=on_cluster)
    table = gather_table(dask_client, history, replayed_frame(history, FeatureConfig()))
    loaded = load_parts(days, rejects_path=in_process)

    assert on_cluster.read_text() == in_process.read_text()
    with on_cluster.open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3
    assert history.rejected_rows == loaded.rejected_rows == 3
    assert list(table.transaction_ids) == list(loaded.frame["transaction_id"])
    expected = replay_features(loaded.frame, FeatureConfig())
    assert np.array_equal(table.features.view(np.uint32), expected.view(np.uint32))
