"""The saturation search's logic, with a fake measurement."""

from __future__ import annotations

import pytest

from benchmarks.measurements.saturation import MAX_STEPS, Attempt, rate_steps, search


class FakeServer:
    """p99 grows with the rate; errors appear from `errors_from` on."""

    def __init__(self, ms_per_100: float, errors_from: float = float("inf")) -> None:
        self.ms_per_100 = ms_per_100
        self.errors_from = errors_from
        self.measured: list[float] = []

    def __call__(self, rate: float) -> Attempt:
        self.measured.append(rate)
        errors = 3 if rate >= self.errors_from else 0
        return Attempt(rate, rate * 0.99, rate / 100 * self.ms_per_100, errors)


def test_search_stops_at_the_first_rate_over_budget_and_reports_the_one_before():
    """p99 passes 50 ms at 600/s: 500/s is the highest held, nothing above 600 is tried."""
    server = FakeServer(ms_per_100=9.0)

    result = search([100, 200, 300, 400, 500, 600, 700], server, budget_p99_ms=50.0)

    assert server.measured == [100, 200, 300, 400, 500, 600]
    assert result.highest_held_rate == 500
    assert [step.held for step in result.steps] == [True] * 5 + [False]


def test_search_stops_at_the_first_rate_with_errors():
    """Errors end the search even with p99 within the budget."""
    server = FakeServer(ms_per_100=1.0, errors_from=300)

    result = search([100, 200, 300, 400], server, budget_p99_ms=50.0)

    assert server.measured == [100, 200, 300]
    assert result.highest_held_rate == 200
    assert result.steps[-1].errors == 3


def test_search_reports_none_when_the_first_rate_fails_and_the_last_when_all_hold():
    """No rate held gives None; every rate held gives the last one."""
    assert search([100, 200], FakeServer(ms_per_100=80.0), 50.0).highest_held_rate is None
    assert search([100, 200], FakeServer(ms_per_100=1.0), 50.0).highest_held_rate == 200


def test_rate_steps_run_linearly_up_to_the_maximum():
    """start, start + step, ... never past the maximum."""
    assert rate_steps(500, 500, 2200) == [500, 1000, 1500, 2000]


@pytest.mark.parametrize(
    ("start", "step", "maximum"), [(0, 100, 500), (500, 0, 900), (900, 100, 500)]
)
def test_rate_steps_refuse_nonsense(start: float, step: float, maximum: float):
    """A zero start or step, or a maximum under the start, is refused."""
    with pytest.raises(ValueError, match="positive"):
        rate_steps(start, step, maximum)


def test_rate_steps_are_bounded_in_number():
    """A search of more than MAX_STEPS steps is refused."""
    with pytest.raises(ValueError, match=f"at most {MAX_STEPS}"):
        rate_steps(1, 1, MAX_STEPS + 1)
