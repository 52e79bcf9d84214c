"""PNG charts of a report (matplotlib, no display needed).

spectrum.png            latency by percentile for every measurement: HdrHistogram's
                        "percentile distribution" plot, the x axis 1 / (1 - p) on a
                        log scale so that 90%, 99%, 99.9%... are evenly spaced and
                        the tail is as readable as the median
timeline-<name>.png     per measurement, per second of the run: latency (p50, p99,
                        max) of the answers that came in that second, and how many
                        came (throughput), against the rate asked for
saturation.png          the saturation search: p99 and achieved rate by rate asked
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from benchmarks.measurements.load_run import Measurement
from benchmarks.measurements.saturation import Saturation
from benchmarks.reporting.report import Report

_SIZE = (9.0, 5.5)
_DPI = 110


def write_charts(report: Report, directory: Path) -> list[Path]:
    """Every chart the report has data for, written into `directory`; their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if report.measurements:
        paths.append(spectrum_chart(report.measurements, directory / "spectrum.png"))
    for measurement in report.measurements:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", measurement.name)
        paths.append(timeline_chart(measurement, directory / f"timeline-{name}.png"))
    if report.saturation is not None and report.saturation.steps:
        paths.append(saturation_chart(report.saturation, directory / "saturation.png"))
    return paths


def spectrum_chart(measurements: Sequence[Measurement], path: Path) -> Path:
    """Latency by percentile, one line per measurement, x = 1 / (1 - p) on a log scale."""
    figure = Figure(figsize=_SIZE)
    axes = figure.subplots()
    furthest = 10.0
    for measurement in measurements:
        # 100% is infinitely far right on this axis: the maximum is in the table.
        points = [(p, ms) for p, ms in measurement.spectrum if p < 100.0]
        if points:
            x = [1.0 / (1.0 - p / 100.0) for p, _ in points]
            axes.plot(x, [ms for _, ms in points], label=measurement.name)
            furthest = max(furthest, x[-1])
    axes.set_xscale("log")
    axes.set_yscale("log")
    ticks = [10.0**k for k in range(math.ceil(math.log10(furthest)) + 1)]
    axes.set_xticks(ticks, [_percentile_label(tick) for tick in ticks])
    axes.set_xlabel("percentile")
    axes.set_ylabel("latency (ms, log scale)")
    axes.set_title("Latency by percentile (from due time)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def timeline_chart(measurement: Measurement, path: Path) -> Path:
    """Per second: latency p50/p99/max above, answers per second below."""
    figure = Figure(figsize=_SIZE)
    latency, throughput = figure.subplots(2, 1, sharex=True)
    seconds = [second.second for second in measurement.timeline]
    for label in ("p50", "p99", "max"):
        values = [getattr(second, f"{label}_ms") for second in measurement.timeline]
        latency.plot(seconds, [float("nan") if v is None else v for v in values], label=label)
    latency.set_yscale("log")
    latency.set_ylabel("latency (ms)")
    latency.set_title(f"{measurement.name}: latency and throughput per second")
    latency.legend(fontsize="small")
    _throughput(throughput, measurement, seconds)
    for axes in (latency, throughput):
        axes.grid(True, alpha=0.3)
    return _save(figure, path)


def saturation_chart(saturation: Saturation, path: Path) -> Path:
    """p99 against the rate asked (budget drawn), and the rate achieved."""
    figure = Figure(figsize=_SIZE)
    p99, achieved = figure.subplots(2, 1, sharex=True)
    rates = [step.rate for step in saturation.steps]
    p99.plot(rates, [step.p99_ms for step in saturation.steps], marker="o", label="p99")
    p99.axhline(saturation.budget_p99_ms, color="red", linestyle="--", label="budget")
    p99.set_yscale("log")
    p99.set_ylabel("p99 (ms)")
    p99.set_title("Saturation search (open loop)")
    p99.legend(fontsize="small")
    achieved.plot(rates, [step.achieved_rate for step in saturation.steps], marker="o")
    achieved.plot(rates, rates, linestyle=":", color="grey", label="asked")
    achieved.set_xlabel("rate asked (calls/s)")
    achieved.set_ylabel("achieved (answers/s)")
    for axes in (p99, achieved):
        axes.grid(True, alpha=0.3)
    return _save(figure, path)


def _throughput(axes: Axes, measurement: Measurement, seconds: list[int]) -> None:
    axes.bar(seconds, [second.answers for second in measurement.timeline], width=0.8)
    settings = measurement.settings
    if settings.mode == "open":
        axes.axhline(settings.rate, color="grey", linestyle=":", label="asked")
        axes.legend(fontsize="small")
    axes.set_xlabel("second of the run")
    axes.set_ylabel("answers/s")


def _percentile_label(tick: float) -> str:
    percent = 100.0 * (1.0 - 1.0 / tick)
    return f"{percent:.10g}%"


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    return path
