"""Tests for benchmarks.measurements.scoring_path: it scores through the production
listeners and reports CPU per transaction."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

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
        rf"scoring path \({state}\): cpu \d+\.\d µs/transaction, wall \d+\.\d µs/transaction\n",
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
        r"wall \d+\.\d µs/transaction\n",
        run.stdout,
    )
