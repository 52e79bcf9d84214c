"""Tests for benchmarks.measurements.scoring_path: it scores through the production
listeners and reports CPU per transaction and the share of answers flagged."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from benchmarks.load.traffic import load_history
from service.app import build_scorer, champion_feature_config
from service.config.settings import ServeSettings, StateSettings
from service.core.domain import Decision
from service.features import FeatureEngine
from service.grpc_api.converters import to_raw_transaction
from service.model.store import ModelStore
from service.state.opening import open_state
from tests.conftest import TrainedModel


@pytest.mark.parametrize("state", ["memory", "lmdb"])
def test_it_scores_the_champion_and_reports_cost_per_transaction(
    trained_model: TrainedModel, state: str
) -> None:
    """One line of figures for a short run against a real registry, on either local store."""
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.measurements.scoring_path",
         "--registry", str(trained_model.registry), "--transactions", "300", "--warmup", "50",
         "--state", state],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert re.fullmatch(
        rf"scoring path \({state}\): cpu \d+\.\d µs/transaction, wall \d+\.\d µs/transaction, "
        r"\d+\.\d% flagged\n",
        run.stdout,
    )


def test_uuid_ids_are_scored_and_named_in_the_figures(trained_model: TrainedModel) -> None:
    """With `--ids uuid` every id is a UUID, and the line says so."""
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.measurements.scoring_path",
         "--registry", str(trained_model.registry), "--transactions", "300", "--warmup", "50",
         "--ids", "uuid"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert re.fullmatch(
        r"scoring path \(memory, uuid ids\): cpu \d+\.\d µs/transaction, "
        r"wall \d+\.\d µs/transaction, \d+\.\d% flagged\n",
        run.stdout,
    )


def test_history_rows_are_scored_and_their_flagged_share_counted(
    trained_model: TrainedModel,
) -> None:
    """With `--data` the rows of a history are sent; the share flagged is the one a bare
    scorer (no listeners) gives the same rows."""
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.measurements.scoring_path",
         "--registry", str(trained_model.registry), "--transactions", "400", "--warmup", "0",
         "--data", str(trained_model.history)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    line = re.fullmatch(
        r"scoring path \(memory, history rows\): cpu \d+\.\d µs/transaction, "
        r"wall \d+\.\d µs/transaction, (\d+\.\d)% flagged\n",
        run.stdout,
    )
    assert line is not None, run.stdout
    assert float(line.group(1)) == pytest.approx(
        100 * _flagged_in_first(400, trained_model), abs=0.05
    )


def test_synthetic_ids_and_a_history_are_not_asked_for_together(
    trained_model: TrainedModel,
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.measurements.scoring_path",
         "--registry", str(trained_model.registry), "--ids", "uuid",
         "--data", str(trained_model.history)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    assert "not allowed with argument" in run.stderr


def _flagged_in_first(count: int, model: TrainedModel) -> float:
    """The share of the history's first `count` rows a fresh scorer flags, scored here (no
    listeners, so nothing is written)."""
    settings = ServeSettings(registry=model.registry, state=StateSettings(backend="memory"))
    config = champion_feature_config(model.registry)
    store = ModelStore(model.registry, feature_config=config)
    store.load_champion()
    engine = FeatureEngine(config, open_state(settings.state, config))
    scorer = build_scorer(settings, engine, store)
    flagged = sum(
        scorer.score(to_raw_transaction(request)).decision is not Decision.APPROVE
        for request in load_history(model.history, count).requests
    )
    return flagged / count
