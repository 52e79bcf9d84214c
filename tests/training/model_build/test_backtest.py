"""The handbook's prequential protocol: folds, test-set exclusions, feature subsets."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from service.features import FeatureConfig
from training.config import BoosterConfig, TrainSettings
from training.data.dataset import FeatureTable, build_feature_table
from training.model_build import backtest
from training.model_build.backtest import (
    HANDBOOK_BEST,
    HANDBOOK_FEATURES,
    BacktestWindows,
    _known_compromised,
    run_backtest,
)

# The fixture history starts 2018-04-01 and lasts 60 days.
WINDOWS = BacktestWindows(earliest_start=date(2018, 4, 20), folds=2)
# One thread, as the conftest's small model: two spin waiting for each other on a busy box.
FAST = TrainSettings(booster=BoosterConfig(max_rounds=40, early_stopping_rounds=10, num_threads=1))
# What each fold reports, and what the mean and spread summarise.
REPORTED_METRICS = (
    "auc_roc",
    "average_precision",
    "card_precision_at_100",
    "card_precision_ceiling",
)


@pytest.fixture(scope="module", autouse=True)
def one_replay_per_history() -> Iterator[None]:
    """The backtests here read one history with one feature config: the replay, about 70% of
    a backtest's CPU, runs at the first backtest, through the real `build_feature_table`, and
    the next reads its table (the backtest only selects from it)."""
    replayed: dict[tuple[Path, str], FeatureTable] = {}

    def replay_once(data: Path, config: FeatureConfig, **options: Any) -> FeatureTable:
        key = (data, config.model_dump_json())
        if key not in replayed:
            replayed[key] = build_feature_table(data, config, **options)
        return replayed[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backtest, "build_feature_table", replay_once)
        yield


def test_backtest_reports_each_fold_and_their_mean(small_history: Path):
    """Two folds a week apart, each with every metric and in range; the mean and spread are
    the folds' own."""
    result = run_backtest(small_history, FAST, WINDOWS)
    assert set(result) == {"protocol", "folds", "mean", "std", "handbook_best"}
    # The report is JSON-shaped (`dict[str, object]`); the rows' content is checked below.
    folds = cast("list[dict[str, float]]", result["folds"])
    assert [set(fold) for fold in folds] == [{"training_day", "rounds", *REPORTED_METRICS}] * 2
    assert [fold["training_day"] for fold in folds] == [17641, 17648]
    for fold in folds:
        assert 0.5 < fold["auc_roc"] <= 1.0
        assert 0.0 <= fold["card_precision_at_100"] <= 1.0
        assert 1 <= fold["rounds"] <= 40
    assert result["mean"] == pytest.approx(
        {name: np.mean([fold[name] for fold in folds]) for name in REPORTED_METRICS}
    )
    assert result["std"] == pytest.approx(
        {name: np.std([fold[name] for fold in folds]) for name in REPORTED_METRICS}
    )
    assert result["handbook_best"] == HANDBOOK_BEST


def test_backtest_with_the_handbook_feature_set(small_history: Path):
    """The baseline feature subset runs through the same protocol and is recorded."""
    windows = replace(WINDOWS, folds=1, features=HANDBOOK_FEATURES)
    result = run_backtest(small_history, FAST, windows)
    assert result["protocol"] == {
        "earliest_training_day": "2018-04-20",
        "folds": 1,
        "train_days": 7,
        "delay_days": 7,  # the default label delay, 7 days
        "test_days": 7,
        "features": list(HANDBOOK_FEATURES),
    }
    assert len(HANDBOOK_FEATURES) == 15


def test_known_compromised_cards_leave_the_test_set_after_delay_plus_one_day():
    """A fraud from the training start on hides its card's rows from delay + 1 days later."""
    days = np.array([9, 10, 15, 17, 18, 18], dtype=np.int64)
    cards = np.array(["old", "a", "a", "a", "a", "b"], dtype=object)
    labels = np.array([1, 1, 0, 0, 0, 0], dtype=np.int8)
    table = FeatureTable(
        source=None,  # type: ignore[arg-type]  # not read by the exclusion
        features=np.zeros((6, 1), dtype=np.float32),
        labels=labels,
        days=days,
        cards=cards,
        transaction_ids=np.array([str(i) for i in range(6)], dtype=object),
    )
    hidden = _known_compromised(table, start=10, delay=7)
    # Card a's fraud on day 10 is known from day 18; the fraud before the start is ignored.
    assert hidden.tolist() == [False, False, False, False, True, False]
