"""Issue 17's targets judged on a suite's rows: met, not met, or not judged and why."""

from __future__ import annotations

import pytest

from benchmarks.load.histograms import LatencySummary
from benchmarks.measurements.load_run import LoadSettings, Measurement, Mode
from benchmarks.reporting.report import Target
from benchmarks.reporting.targets import judge_targets, stream_row

ONNX_CPU_RATIO = "server_cpu_vs_floor_onnx"


def _row(
    name: str,
    *,
    mode: Mode = "open",
    rate: float = 2000.0,
    in_flight: int = 32,
    achieved: float | None = None,
    p99_ms: float = 3.0,
    p99_9_ms: float = 8.0,
    errors: int = 0,
) -> Measurement:
    """A measurement with just the figures the targets read."""
    answers = 10_000
    return Measurement(
        name=name,
        settings=LoadSettings(
            "127.0.0.1:50051", mode, "unary", seconds=5, rate=rate, in_flight=in_flight
        ),
        calls_sent=answers + errors,
        achieved_rate=rate if achieved is None else achieved,
        latency=LatencySummary(answers, 1.0, 0.8, 1.5, p99_ms, p99_9_ms, p99_9_ms + 1),
        statuses={"OK": answers} | ({"UNAVAILABLE": errors} if errors else {}),
        outcome_statuses={},
        decisions={},
        fallbacks=0,
        errors=errors,
        client_cpu_share=[0.5],
        client_cpu_us_per_call=100.0,
        client_run_queue_wait_share=[0.0],
        client_gc_pause_max_ms=0.0,
        server=None,
        server_latency=None,
        spectrum=[],
        timeline=[],
    )


def _passing_rows() -> list[Measurement]:
    return [
        _row("floor-onnx", p99_ms=3.1),
        _row("floor-onnx-closed", mode="closed", achieved=3300.0),
        _row("serve-open-unary-2-workers", p99_ms=4.0, p99_9_ms=12.0),
        _row(stream_row(5000), rate=5000.0, p99_ms=6.0),
        _row(stream_row(10_000), rate=10_000.0, achieved=9950.0),
    ]


def _by_row(targets: list[Target]) -> dict[str, Target]:
    return {target.row: target for target in targets}


def test_every_target_met_on_rows_within_them():
    """Rows inside every limit, at the issue's rates: each target met, with its figures."""
    targets = judge_targets(_passing_rows(), {ONNX_CPU_RATIO: 1.2})

    assert [target.met for target in targets] == [True] * 6
    judged = _by_row(targets)
    assert judged["floor-onnx"].name == "floor-onnx holds 2,000/s"
    assert judged["floor-onnx"].measured == "p99 3.10 ms, errors 0"
    assert judged["serve-open-unary-2-workers"].measured == "p99 4.00 ms, p99.9 12.00 ms, errors 0"
    assert judged["floor-onnx-closed"].measured == "3,300/s, errors 0"
    assert judged["serve-open-unary / floor-onnx"].measured == "1.20x"


@pytest.mark.parametrize(
    ("row", "failing"),
    [
        ("floor-onnx", {"p99_ms": 5.2}),
        ("floor-onnx", {"errors": 1}),
        ("floor-onnx-closed", {"mode": "closed", "achieved": 3100.0}),
        ("serve-open-unary-2-workers", {"p99_9_ms": 15.5}),
        ("serve-open-unary-2-workers", {"errors": 3}),
        (stream_row(5000), {"rate": 5000.0, "p99_ms": 10.5}),
        (stream_row(10_000), {"rate": 10_000.0, "achieved": 9800.0}),
        (stream_row(10_000), {"rate": 10_000.0, "errors": 2}),
    ],
)
def test_a_row_past_its_limit_does_not_meet_its_target(row: str, failing: dict[str, object]):
    """One figure past its limit (or one error) fails that row's target and no other."""
    rows = [m for m in _passing_rows() if m.name != row] + [_row(row, **failing)]  # type: ignore[arg-type]

    judged = _by_row(judge_targets(rows, {ONNX_CPU_RATIO: 1.2}))

    assert judged[row].met is False
    assert [t.met for name, t in judged.items() if name != row] == [True] * 5


def test_the_cpu_ratio_is_judged_against_1_25():
    """Above 1.25 x the floor's CPU per answer is not met; errors make it not judged."""
    over = _by_row(judge_targets(_passing_rows(), {ONNX_CPU_RATIO: 1.3}))
    errors = _by_row(judge_targets(_passing_rows(), {ONNX_CPU_RATIO: None}))

    assert over["serve-open-unary / floor-onnx"].met is False
    assert errors["serve-open-unary / floor-onnx"].met is None
    assert "errors" in errors["serve-open-unary / floor-onnx"].detail


def test_targets_without_their_rows_are_not_judged():
    """No rows and no comparisons: every target not judged, saying its row is missing."""
    targets = judge_targets([], {})

    assert [target.met for target in targets] == [None] * 6
    assert {target.detail for target in targets} == {"row not measured", "rows not measured"}


def test_rows_measured_below_the_issues_load_are_not_judged():
    """A quick run (200/s, 8 in flight, other stream rates) meets nothing: not judged."""
    rows = [
        _row("floor-onnx", rate=200.0),
        _row("floor-onnx-closed", mode="closed", in_flight=8, achieved=5000.0),
        _row("serve-open-unary-2-workers", rate=200.0),
        _row(stream_row(500), rate=500.0),
    ]

    judged = _by_row(judge_targets(rows, {ONNX_CPU_RATIO: 1.0}))

    assert judged["floor-onnx"].met is None
    assert judged["floor-onnx"].detail == "measured at 200/s; the target is at 2,000/s"
    assert (
        judged["floor-onnx-closed"].detail
        == "measured at 8 in flight; the target is at 32 in flight"
    )
    assert judged["serve-open-unary-2-workers"].met is None
    assert judged[stream_row(5000)].met is None
    assert judged[stream_row(10_000)].met is None
