"""The feature-state memory measurement, on a small real history."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from benchmarks.measurements.memory import champion_feature_config, measure_memory
from tests.conftest import TrainedModel


def test_memory_counts_the_days_cards_and_terminals_it_fed(trained_model: TrainedModel):
    """Ten days of history: exactly those rows, their distinct cards and terminals."""
    with trained_model.history.open(newline="") as file:
        rows = list(csv.DictReader(file))
    end = datetime.fromisoformat(rows[0]["timestamp"]) + timedelta(days=10)
    fed = [row for row in rows if datetime.fromisoformat(row["timestamp"]) < end]

    figures = measure_memory(
        champion_feature_config(trained_model.registry), trained_model.history, 10
    )

    assert figures.transactions == len(fed)
    assert figures.cards == len({row["card_id"] for row in fed})
    assert figures.terminals == len({row["terminal_id"] for row in fed})
    assert figures.growth_bytes == figures.rss_after_bytes - figures.rss_before_bytes
    assert figures.bytes_per_card == pytest.approx(figures.growth_bytes / figures.cards, abs=0.1)


def test_a_registry_without_champion_is_refused(tmp_path: Path):
    """No champion, no feature config to measure with."""
    with pytest.raises(ValueError, match="no champion"):
        champion_feature_config(tmp_path)
