"""Due times of open-loop schedules: constant and Poisson arrivals."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.load.schedule import due_offsets


def test_constant_arrivals_are_evenly_spaced_from_zero():
    """Request i is due at exactly i / rate."""
    assert due_offsets(5, 4.0, "constant").tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_poisson_arrivals_have_exponential_gaps_at_the_asked_rate():
    """Gaps average 1 / rate with a standard deviation equal to their mean (exponential)."""
    due = due_offsets(50_000, 200.0, "poisson", seed=3)
    gaps = np.diff(due)

    assert due[0] == 0.0
    assert np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.03)
    assert gaps.std() == pytest.approx(gaps.mean(), rel=0.05)


def test_poisson_arrivals_repeat_with_the_seed_and_change_without_it():
    """The same seed gives the same schedule; another seed, another one."""
    first = due_offsets(100, 50.0, "poisson", seed=1)

    assert np.array_equal(first, due_offsets(100, 50.0, "poisson", seed=1))
    assert not np.array_equal(first, due_offsets(100, 50.0, "poisson", seed=2))


@pytest.mark.parametrize(("count", "rate"), [(-1, 10.0), (10, 0.0)])
def test_a_negative_count_or_a_rate_of_zero_is_refused(count: int, rate: float):
    """No schedule for a negative count or a non-positive rate."""
    with pytest.raises(ValueError, match="rate"):
        due_offsets(count, rate)


def test_an_empty_poisson_schedule_is_empty():
    """Zero requests make an empty schedule whatever the arrivals."""
    assert due_offsets(0, 10.0, "poisson").size == 0
