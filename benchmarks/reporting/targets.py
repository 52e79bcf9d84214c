"""Issue 17's targets, judged on the rows of a suite report.

    floor-onnx                  holds 2,000/s open loop at p99 <= 5 ms, no error
    floor-onnx-closed           >= 3,200 answers/s with 32 calls in flight, no error
    server_cpu_vs_floor_onnx    fraud-serve's CPU per answer <= 1.25 x the ONNX floor's
                                (open loops at the same rate, both without errors)
    serve-open-unary-2-workers  holds 2,000/s open loop at p99 <= 5 ms and
                                p99.9 <= 15 ms, no error
    serve-open-stream-5000      ScoreStream per-message p99 <= 10 ms, no error
    serve-open-stream-10000     10,000 tx/s sustained: no error, and at least 99% of the
                                rate asked achieved (answers over the time to the last
                                answer, which runs a little past the schedule's end)

A target is judged only on a row measured where the issue sets it: an open loop at
2,000/s or more (`--rate`), a closed loop at 32 in flight (`--in-flight`), the stream
rows at exactly their rates (`--stream-rates`). Otherwise, or when the row is missing,
it is not judged and says why: a quick run at 200/s meets nothing. The overload's targets
come from its own criteria (`benchmarks.faults.chaos`), judged there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from benchmarks.measurements.load_run import Measurement
from benchmarks.reporting.report import COMPARISON_TARGETS, Target

TARGET_RATE = 2000.0
TARGET_IN_FLIGHT = 32
FLOOR_P99_MS = 5.0
FLOOR_CLOSED_RATE = 3200.0
WORKERS_P99_MS = 5.0
WORKERS_P99_9_MS = 15.0
STREAM_P99_MS = 10.0
STREAM_P99_RATE = 5000.0
STREAM_SUSTAINED_RATE = 10_000.0
SUSTAINED_SHARE = 0.99
_CPU_RATIO = "server_cpu_vs_floor_onnx"


def stream_row(rate: float) -> str:
    """The name of the ScoreStream row at `rate` transactions per second."""
    return f"serve-open-stream-{rate:g}"


def judge_targets(
    measurements: Sequence[Measurement], comparisons: Mapping[str, float | None]
) -> list[Target]:
    """Every target of the module docstring, judged on `measurements` and `comparisons`."""
    rows = {m.name: m for m in measurements}
    return [
        _holds(rows, "floor-onnx", FLOOR_P99_MS),
        _closed_rate(rows, "floor-onnx-closed", FLOOR_CLOSED_RATE),
        _cpu_ratio(comparisons),
        _holds(rows, "serve-open-unary-2-workers", WORKERS_P99_MS, WORKERS_P99_9_MS),
        _holds(rows, stream_row(STREAM_P99_RATE), STREAM_P99_MS),
        _sustained(rows, stream_row(STREAM_SUSTAINED_RATE)),
    ]


def _holds(
    rows: Mapping[str, Measurement], row: str, p99_ms: float, p99_9_ms: float | None = None
) -> Target:
    limit = f"p99 <= {p99_ms:g} ms" + ("" if p99_9_ms is None else f", p99.9 <= {p99_9_ms:g} ms")
    m = rows.get(row)
    if m is None:
        return Target(f"{row} holds its rate", row, "-", limit, None, "row not measured")
    name = f"{row} holds {m.settings.rate:,.0f}/s"
    if m.settings.rate < TARGET_RATE:
        return Target(name, row, "-", limit, None, _elsewhere(m, f"{TARGET_RATE:,.0f}/s"))
    latency = m.latency
    measured = f"p99 {latency.p99_ms:.2f} ms"
    met = latency.count > 0 and m.errors == 0 and latency.p99_ms <= p99_ms
    if p99_9_ms is not None:
        measured += f", p99.9 {latency.p99_9_ms:.2f} ms"
        met = met and latency.p99_9_ms <= p99_9_ms
    return Target(name, row, f"{measured}, errors {m.errors:,}", f"{limit}, no error", met)


def _closed_rate(rows: Mapping[str, Measurement], row: str, rate: float) -> Target:
    limit = f">= {rate:,.0f}/s"
    m = rows.get(row)
    if m is None:
        return Target(f"{row} rate", row, "-", limit, None, "row not measured")
    name = f"{row} rate at {m.settings.in_flight} in flight"
    if m.settings.in_flight != TARGET_IN_FLIGHT:
        return Target(name, row, "-", limit, None, _elsewhere(m, f"{TARGET_IN_FLIGHT} in flight"))
    measured = f"{m.achieved_rate:,.0f}/s, errors {m.errors:,}"
    met = m.errors == 0 and m.achieved_rate >= rate
    return Target(name, row, measured, f"{limit}, no error", met)


def _cpu_ratio(comparisons: Mapping[str, float | None]) -> Target:
    limit = f"<= {COMPARISON_TARGETS[_CPU_RATIO]:g}x"
    name = "fraud-serve CPU per answer over floor-onnx's"
    rows = "serve-open-unary / floor-onnx"
    if _CPU_RATIO not in comparisons:
        return Target(name, rows, "-", limit, None, "rows not measured")
    ratio = comparisons[_CPU_RATIO]
    if ratio is None:
        return Target(name, rows, "-", limit, None, "a run had errors: not comparable")
    return Target(name, rows, f"{ratio:.2f}x", limit, ratio <= COMPARISON_TARGETS[_CPU_RATIO])


def _sustained(rows: Mapping[str, Measurement], row: str) -> Target:
    m = rows.get(row)
    limit = f">= {SUSTAINED_SHARE:.0%} of the rate asked, no error"
    if m is None:
        return Target(f"{row} sustained", row, "-", limit, None, "row not measured")
    name = f"{row} sustains {m.settings.rate:,.0f} tx/s"
    measured = f"{m.achieved_rate:,.0f}/s, errors {m.errors:,}"
    met = m.errors == 0 and m.achieved_rate >= SUSTAINED_SHARE * m.settings.rate
    return Target(name, row, measured, limit, met)


def _elsewhere(m: Measurement, where: str) -> str:
    asked = m.settings.in_flight if m.settings.mode == "closed" else m.settings.rate
    unit = " in flight" if m.settings.mode == "closed" else "/s"
    return f"measured at {asked:,.0f}{unit}; the target is at {where}"
