"""`train --dask`: where the model is fitted, and the fit with `lightgbm.dask` when the
feature matrix does not fit one worker.

A local fit holds the whole matrix, the training period's copy and LightGBM's binned
dataset at once: about `_LOCAL_FIT_BYTES_PER_VALUE` bytes per feature value. When that fits
the smallest worker's memory the table comes back to this process and the fit is
`fit_candidate`'s, identical to a single-process run on the same features.

Otherwise the training rows stay on the cluster and `lightgbm.dask` fits them with the
same parameters. It has no early stopping, so the number of rounds is chosen first by the
local fit's early stopping on a sample of the training and validation rows
(`cluster.sample_rows`). Only the held-out rows (validation, test, and the week and label
delay before them that card precision@k reads for known frauds) come back to this process,
for the scores, thresholds, ONNX export, parity gate and artifact every model gets.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from dataclasses import dataclass

import dask.dataframe as dd
import lightgbm as lgb
import numpy as np
import pandas as pd
from distributed import Client
from lightgbm.dask import DaskLGBMClassifier

from service.features import FEATURES
from training.config import ClusterFitConfig, TrainSettings
from training.data.cluster import persist_with_progress
from training.data.cluster_replay import CARD_NAMES, RISK_NAMES, TIME_ORDER, feature_matrix
from training.data.split import NANOS_PER_DAY, Periods, split_periods
from training.model_build.booster import fit_booster
from training.model_build.candidate import FEATURE_NAMES, ModelData

# float32 matrix, its training-period copy, LightGBM's bins and the arrays beside it.
_LOCAL_FIT_BYTES_PER_VALUE = 12
# Card precision@k looks back a label delay and one week of days for known frauds.
_CARD_PRECISION_WEEK = 7


@dataclass(frozen=True)
class FitPlan:
    on_cluster: bool
    reason: str


@dataclass(frozen=True)
class ClusterFit:
    """A booster fitted on the cluster and the held-out rows it is judged on."""

    booster: lgb.Booster
    held_out: ModelData
    rounds: int
    rows: int
    frauds: int
    first_ns: int
    last_ns: int


def plan_fit(rows: int, worker_memory: int, config: ClusterFitConfig) -> FitPlan:
    """Local unless the matrix would not fit the smallest worker, or the config forces it."""
    needed = rows * len(FEATURES) * _LOCAL_FIT_BYTES_PER_VALUE
    sizes = f"{rows:,} rows need about {needed / 2**30:.2f} GiB to fit in one process"
    budget = f"the smallest worker has {worker_memory / 2**30:.1f} GiB"
    if config.fit == "local":
        return FitPlan(False, f"fit: local, as configured ({sizes})")
    if config.fit == "cluster":
        return FitPlan(True, f"fit: on the cluster with lightgbm.dask, as configured ({sizes})")
    if needed <= worker_memory:
        return FitPlan(False, f"fit: local, the matrix fits one worker ({sizes}; {budget})")
    return FitPlan(True, f"fit: on the cluster with lightgbm.dask ({sizes}; {budget})")


def fit_on_cluster(
    client: Client, replayed: dd.DataFrame, settings: TrainSettings, *, progress: bool = False
) -> ClusterFit:
    """Fit on the cluster's training rows; bring back the held-out rows (module docstring)."""
    # Kept on the cluster: the census, the sample, the fit and the held-out rows all read it.
    (replayed,) = persist_with_progress(
        client, [replayed.assign(day=replayed["timestamp_ns"] // NANOS_PER_DAY)], progress=progress
    )
    census = _census(client, replayed)
    periods = _periods(census, settings)
    train_start, train_end = periods.train_days
    validation_start, test_start = periods.validation_days
    day = replayed["day"]
    train = replayed[(day >= train_start) & (day < train_end)]
    validation = replayed[(day >= validation_start) & (day < test_start)]
    rounds = _rounds_on_sample(client, train, validation, census, periods, settings, progress)
    model = fit_rounds_on_cluster(client, train, settings, rounds)
    lookback = validation_start - math.ceil(settings.features.label_delay_days)
    held_out = _gather(client, replayed[day >= lookback - _CARD_PRECISION_WEEK])
    train_counts = _counts(census, train_start, train_end)
    return ClusterFit(
        booster=model.booster_,
        held_out=_held_out_data(held_out, periods, train_counts),
        rounds=rounds,
        rows=int(census["rows"].sum()),
        frauds=int(census.loc[census["is_fraud"] == 1, "rows"].sum()),
        first_ns=int(census["first_ns"].min()),
        last_ns=int(census["last_ns"].max()),
    )


def fit_rounds_on_cluster(
    client: Client, train: dd.DataFrame, settings: TrainSettings, rounds: int
) -> DaskLGBMClassifier:
    """`rounds` trees on the cluster's `train` rows (features and `is_fraud`)."""
    params = settings.booster.lightgbm_params()
    # lightgbm.dask gives each worker as many threads as it runs, whatever is asked.
    del params["num_threads"]
    model = DaskLGBMClassifier(client=client, n_estimators=rounds, **params)
    # It prints its progress ("Finding random open ports") to stdout, where the command's
    # result goes; and warns that n_jobs, which the sklearn interface always sets, is
    # replaced by the workers' threads.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Parameter n_jobs will be ignored", UserWarning)
        model.fit(train[FEATURE_NAMES], train["is_fraud"])
    return model


def _census(client: Client, replayed: dd.DataFrame) -> pd.DataFrame:
    """Rows, first and last event per (day, label): what the split and lineage need."""
    grouped = replayed.groupby(["day", "is_fraud"])["timestamp_ns"].agg(["count", "min", "max"])
    census: pd.DataFrame = client.compute(grouped, sync=True)
    census = census.reset_index().rename(
        columns={"count": "rows", "min": "first_ns", "max": "last_ns"}
    )
    return census.sort_values(["day", "is_fraud"]).reset_index(drop=True)


def _periods(census: pd.DataFrame, settings: TrainSettings) -> Periods:
    """The split of the whole history, judged on one row per (day, label) present: the same
    periods and the same verdict (a period without fraud, or only frauds) as on every row."""
    return split_periods(
        census["day"].to_numpy(dtype=np.int64),
        census["is_fraud"].to_numpy(dtype=np.int8),
        settings.split,
        settings.features.label_delay_days,
    )


def _counts(census: pd.DataFrame, start: int, end: int) -> tuple[int, int]:
    within = census[(census["day"] >= start) & (census["day"] < end)]
    return int(within["rows"].sum()), int(within.loc[within["is_fraud"] == 1, "rows"].sum())


def _rounds_on_sample(
    client: Client,
    train: dd.DataFrame,
    validation: dd.DataFrame,
    census: pd.DataFrame,
    periods: Periods,
    settings: TrainSettings,
    progress: bool,
) -> int:
    """The rounds early stopping keeps on a seeded sample of training and validation rows."""
    seed = settings.booster.seed
    wanted = settings.cluster.sample_rows
    samples = []
    for frame, (start, end) in ((train, periods.train_days), (validation, periods.validation_days)):
        rows = _counts(census, start, end)[0]
        fraction = min(1.0, wanted / max(rows, 1))
        sample = _gather(client, frame.sample(frac=fraction, random_state=seed))
        samples.append((feature_matrix(sample), sample["is_fraud"].to_numpy(dtype=np.int8)))
    booster = fit_booster(settings.booster, FEATURE_NAMES, *samples, progress=progress)
    return int(booster.current_iteration())


def _gather(client: Client, frame: dd.DataFrame) -> pd.DataFrame:
    gathered: pd.DataFrame = client.compute(frame, sync=True)
    return gathered.sort_values(TIME_ORDER, kind="stable").reset_index(drop=True)


def _held_out_data(
    held_out: pd.DataFrame, periods: Periods, train_counts: tuple[int, int]
) -> ModelData:
    days = held_out["day"].to_numpy(dtype=np.int64)
    validation_start, test_start = periods.validation_days
    held_periods = Periods(
        train=np.zeros(len(days), dtype=np.bool_),
        validation=(days >= validation_start) & (days < test_start),
        test=days >= test_start,
        first_day=periods.first_day,
        train_days=periods.train_days,
        validation_days=periods.validation_days,
        test_days=periods.test_days,
    )
    return ModelData(
        features=held_out[CARD_NAMES + RISK_NAMES].to_numpy(dtype=np.float32),
        labels=held_out["is_fraud"].to_numpy(dtype=np.int8),
        days=days,
        cards=held_out["card_id"].to_numpy(dtype=object),
        periods=held_periods,
        train_counts=train_counts,
    )
