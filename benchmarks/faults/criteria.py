"""A run's criteria: what was measured against what was asked, and whether it held.

A criterion that could not be judged (the run never reached the state it is about, say)
is `passed=None` and says why in `detail`; it does not fail the command, and the report
says plainly that it was not judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Criterion:
    """One check of a run: `measured` against `limit`, in words as well as figures."""

    name: str
    passed: bool | None
    measured: str
    limit: str
    detail: str = ""


@dataclass(frozen=True)
class Scenario:
    """One scenario of a command (a fault, a soak, a fuzz run): its criteria, its headline
    figures and the time series its charts draw (name to (seconds, values))."""

    name: str
    criteria: list[Criterion]
    figures: dict[str, object] = field(default_factory=dict)
    series: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """No criterion failed (those not judged do not count)."""
        return all(criterion.passed is not False for criterion in self.criteria)


def at_most(
    name: str, measured: float, limit: float, unit: str = "", detail: str = ""
) -> Criterion:
    """`measured` <= `limit`."""
    return Criterion(
        name, measured <= limit, f"{measured:,.4g}{unit}", f"<= {limit:,.4g}{unit}", detail
    )


def at_least(
    name: str, measured: float, limit: float, unit: str = "", detail: str = ""
) -> Criterion:
    """`measured` >= `limit`."""
    return Criterion(
        name, measured >= limit, f"{measured:,.4g}{unit}", f">= {limit:,.4g}{unit}", detail
    )


def equal(name: str, measured: object, expected: object, detail: str = "") -> Criterion:
    """`measured` == `expected`."""
    return Criterion(name, measured == expected, str(measured), f"= {expected}", detail)


def not_judged(name: str, limit: str, why: str) -> Criterion:
    """A criterion this run could not judge, and why."""
    return Criterion(name, None, "not judged", limit, why)
