"""Saturation search: the highest open-loop rate a server holds within a latency budget.

The rate steps up linearly; each step is one measurement. A step is held when its p99
(from due times, so a server falling behind shows) is within the budget and no call
failed. The search stops at the first step not held, and reports the highest rate held
before it (None if the first step already failed). Steps are bounded in number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

MAX_STEPS = 50


@dataclass(frozen=True)
class Attempt:
    """What one step's measurement gave."""

    rate: float
    achieved_rate: float
    p99_ms: float
    errors: int


@dataclass(frozen=True)
class Step:
    """One step of the search and whether the server held it."""

    rate: float
    achieved_rate: float
    p99_ms: float
    errors: int
    held: bool


@dataclass(frozen=True)
class Saturation:
    """Every step measured, in order, and the highest rate held (None if none was)."""

    budget_p99_ms: float
    steps: list[Step]
    highest_held_rate: float | None


def rate_steps(start: float, step: float, maximum: float) -> list[float]:
    """start, start + step, ... up to `maximum`; ValueError past `MAX_STEPS` steps."""
    if start <= 0 or step <= 0 or maximum < start:
        raise ValueError("rates must be positive, with start at most the maximum")
    count = int((maximum - start) // step) + 1
    if count > MAX_STEPS:
        raise ValueError(f"{count} steps: at most {MAX_STEPS} (raise the step)")
    return [start + i * step for i in range(count)]


def search(
    rates: Sequence[float], measure: Callable[[float], Attempt], budget_p99_ms: float
) -> Saturation:
    """Measure each rate in turn until one is not held within `budget_p99_ms`."""
    steps: list[Step] = []
    highest: float | None = None
    for rate in rates:
        attempt = measure(rate)
        held = attempt.p99_ms <= budget_p99_ms and attempt.errors == 0
        steps.append(Step(rate, attempt.achieved_rate, attempt.p99_ms, attempt.errors, held=held))
        if not held:
            break
        highest = rate
    return Saturation(budget_p99_ms, steps, highest)
