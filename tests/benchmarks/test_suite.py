"""The suite's overload row: which of the chaos scenario's criteria are issue 17's targets."""

from __future__ import annotations

from benchmarks.faults.criteria import Criterion, Scenario, at_least, at_most, equal
from benchmarks.measurements.saturation import Saturation, Step
from benchmarks.suite import overload_checks, overload_targets

# The overload scenario's criteria as `benchmarks.faults.chaos` names them.
OVERLOAD = Scenario(
    "overload",
    [
        equal("every refusal RESOURCE_EXHAUSTED", 0, 0, "-"),
        at_most("refusals (RESOURCE_EXHAUSTED) p99 from due time", 6.5, 5.0, " ms", "12 refused"),
        at_most("every refusal, whatever its status: p99 from due time", 4.0, 5.0, " ms"),
        at_least("goodput during the overload", 1400.0, 1350.0, "/s"),
        equal("health port answered SERVING throughout", 0, 0),
        Criterion("p99 back under the budget after the overload", None, "not judged", "<= 2 s"),
    ],
)
# A search that found its limit (1,500/s held, 2,000/s not), and one that held every step.
FOUND = Saturation(50.0, [Step(1500, 1500, 4.0, 0, True), Step(2000, 1700, 80.0, 0, False)], 1500)
BOUNDED = Saturation(50.0, [Step(1000, 1000, 3.0, 0, True), Step(1500, 1500, 4.0, 0, True)], 1500)


def test_the_refusal_and_goodput_criteria_are_the_targets_with_their_verdicts():
    """Refusal status, refusal time and goodput become targets of the overload row, each
    with its own verdict; health and recovery stay the scenario's own checks."""
    targets = overload_targets(3.0, OVERLOAD, FOUND)

    assert [(t.name, t.met) for t in targets] == [
        ("every refusal RESOURCE_EXHAUSTED", True),
        ("refusals (RESOURCE_EXHAUSTED) p99 from due time", False),
        ("every refusal, whatever its status: p99 from due time", True),
        ("goodput during the overload", True),
    ]
    assert targets[1].measured == "6.5 ms"
    assert targets[1].limit == "<= 5 ms"
    assert {t.row for t in targets} == {"overload"}
    assert len(overload_checks(OVERLOAD)) == 6


def test_a_skipped_overload_is_one_target_not_judged():
    """No overload run: one target, not judged, naming the factor and why."""
    (target,) = overload_targets(2.5, None, FOUND)

    assert target.name == "overload at 2.5 x capacity"
    assert target.met is None
    assert "skipped" in target.detail
    assert overload_checks(None) == []


def test_a_capacity_found_only_as_a_lower_bound_is_said_on_every_target():
    """The search held its last step: each overload target says the capacity is at least
    that rate, after its own detail."""
    targets = overload_targets(3.0, OVERLOAD, BOUNDED)

    bound = "capacity at least 1,500/s: the search held every step up to --max-rate"
    assert [t.detail for t in targets] == [bound, f"12 refused; {bound}", bound, bound]
    found = overload_targets(3.0, OVERLOAD, FOUND)
    assert [t.detail for t in found] == ["-", "12 refused", "", ""]
