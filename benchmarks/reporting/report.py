"""What every `fraud-bench` command leaves: one `Report`, as JSON for machines and as a
readable table.

Every report carries `describe_run()` (date, commit, machine, load), the command line
exactly as typed and the settings, so that a figure can always be traced back to how it
was made. Times are in milliseconds, rates in calls per second, CPU in microseconds per
call or in shares of one core (1.0 = a whole core).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # For annotations alone: a report is read and written without the measurements' modules
    # (client processes, psutil, onnxruntime).
    from benchmarks.measurements.load_run import Measurement
    from benchmarks.measurements.memory import MemoryFigures
    from benchmarks.measurements.onnx_floor import InferenceTiming
    from benchmarks.measurements.saturation import Saturation

REPORT_FILE = "report.json"
# Targets of the comparisons: the scoring server's CPU per answer should stay within this
# multiple of the bare gRPC + ONNX floor's (issue 17).
COMPARISON_TARGETS = {"server_cpu_vs_floor_onnx": 1.25}
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """One target a row of the report is judged by: what was measured against the limit,
    and whether it was met; `met` None when it could not be judged (its row is missing,
    or had no answer), with why in `detail`."""

    name: str
    row: str
    measured: str
    limit: str
    met: bool | None
    detail: str = ""


@dataclass(frozen=True)
class Report:
    """Everything one command measured, with how and where it was measured.

    `comparisons` holds derived ratios, e.g. `server_cpu_vs_floor_onnx`; None when the
    runs compared had errors. `targets`: each target judged (the suite's). `overload`:
    the overload run's figures (`benchmarks.faults.chaos`), its checks in `overload_checks`.
    `loads`: the 1-minute load average as each row started, and at the end (`end`).
    """

    command: str
    run: dict[str, object]
    command_line: list[str]
    settings: dict[str, object]
    measurements: list[Measurement] = field(default_factory=list)
    onnx_alone: InferenceTiming | None = None
    saturation: Saturation | None = None
    memory: MemoryFigures | None = None
    comparisons: dict[str, float | None] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    overload: dict[str, object] | None = None
    overload_checks: list[Target] = field(default_factory=list)
    loads: dict[str, float] = field(default_factory=dict)


def write_json(report: Report, directory: Path) -> Path:
    """Write `report` as `report.json` in `directory` (created if missing); its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REPORT_FILE
    path.write_text(json.dumps(dataclasses.asdict(report), indent=2, default=str) + "\n")
    return path


def render_table(report: Report) -> str:
    """The report as plain text: one line per measurement, then the sections it has."""
    run = report.run
    lines = [
        f"fraud-bench {report.command} | {run.get('date')} | commit {run.get('commit')} | "
        f"{run.get('cpu')} x {run.get('cores')} | load {run.get('load_average_1m')}",
    ]
    if report.measurements:
        lines += ["", *_measurement_table(report.measurements), ""]
        lines += _details(report.measurements)
    if report.onnx_alone is not None:
        lines += ["", _onnx_line(report.onnx_alone)]
    lines += [_comparison_line(name, ratio) for name, ratio in report.comparisons.items()]
    if report.saturation is not None:
        lines += ["", *_saturation_lines(report.saturation)]
    if report.overload is not None:
        lines += ["", *_overload_lines(report.overload, report.overload_checks)]
    if report.memory is not None:
        lines += ["", _memory_line(report.memory)]
    if report.targets:
        lines += ["", *_target_lines(report.targets)]
    if report.loads:
        lines += ["", "load average (1 min) at each row's start: " + _loads(report.loads)]
    return "\n".join(lines) + "\n"


_COLUMNS = (
    "measurement", "mode", "rpc", "asked/s", "achieved/s", "p50", "p90", "p99", "p99.9",
    "max", "errors", "server us/answer", "server cpu/wait", "client cpu/wait",
)  # fmt: skip


def _measurement_table(measurements: Sequence[Measurement]) -> list[str]:
    rows = [list(_COLUMNS), *([*_row(m)] for m in measurements)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]


def _row(m: Measurement) -> list[str]:
    settings, latency, server = m.settings, m.latency, m.server
    asked = (
        f"{settings.rate:,.0f}" if settings.mode == "open" else f"{settings.in_flight} in flight"
    )
    quantiles = [latency.p50_ms, latency.p90_ms, latency.p99_ms, latency.p99_9_ms, latency.max_ms]
    return [
        m.name,
        settings.mode,
        settings.rpc,
        asked,
        f"{m.achieved_rate:,.0f}",
        *(f"{value:.2f}" if latency.count else "-" for value in quantiles),
        f"{m.errors:,}",
        "-" if server is None else f"{server.cpu_us_per_answer:,.0f}",
        "-" if server is None else f"{server.cpu_share:.2f}/{server.run_queue_wait_share:.2f}",
        _client_shares(m),
    ]


def _client_shares(m: Measurement) -> str:
    pairs = zip(m.client_cpu_share, m.client_run_queue_wait_share, strict=True)
    return " ".join(f"{cpu:.2f}/{wait:.2f}" for cpu, wait in pairs)


def _details(measurements: Sequence[Measurement]) -> list[str]:
    """Per measurement: statuses, outcome statuses, decision mix and the server's view."""
    lines = [
        "latency in ms from each call's due (open) or send (closed) time; asked/s counts "
        "every call (outcome reports too), achieved/s the OK Score answers"
    ]
    for m in measurements:
        parts = [
            f"statuses {_counts(m.statuses)}",
            f"outcomes {_counts(m.outcome_statuses) or '-'}",
            # A peer's answers (MLServer's) are timed, not read: no decisions to count.
            f"decisions {_counts(m.decisions)}, fallback {m.fallbacks:,}"
            if m.decisions
            else "decisions -",
            f"client cpu {m.client_cpu_us_per_call:,.0f} µs/call",
            f"client gc pause max {m.client_gc_pause_max_ms:.1f} ms",
        ]
        if m.server_latency is not None:
            view = m.server_latency
            parts.append(f"server's own p50/p99 {view.p50_ms:.2f}/{view.p99_ms:.2f} ms")
        if m.server is not None:
            parts.append(f"server RSS {m.server.rss_bytes_after / _MIB:,.0f} MiB")
        lines.append(f"  {m.name}: " + "; ".join(parts))
    return lines


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{name} {count:,}" for name, count in sorted(counts.items()))


def _comparison_line(name: str, ratio: float | None) -> str:
    shown = "not comparable, a run had errors (lower --rate)" if ratio is None else f"{ratio:.2f}x"
    target = COMPARISON_TARGETS.get(name)
    return f"{name}: {shown}" + ("" if target is None else f" (target <= {target}x)")


def _onnx_line(timing: InferenceTiming) -> str:
    return (
        f"single-row ONNX inference alone ({timing.features} features, {timing.calls:,} calls): "
        f"mean {timing.mean_us:.1f} us, p50 {timing.p50_us:.1f} us, p99 {timing.p99_us:.1f} us"
    )


def _saturation_lines(saturation: Saturation) -> list[str]:
    lines = [
        f"saturation search, open loop, held = p99 <= {saturation.budget_p99_ms:g} ms, no errors"
    ]
    for step in saturation.steps:
        lines.append(
            f"  {step.rate:>8,.0f}/s asked  {step.achieved_rate:>8,.0f}/s achieved  "
            f"p99 {step.p99_ms:>9.2f} ms  errors {step.errors:>6,}  "
            f"{'held' if step.held else 'NOT held'}"
        )
    highest = saturation.highest_held_rate
    lines.append(f"  highest rate held: {'none' if highest is None else f'{highest:,.0f}/s'}")
    return lines


def _memory_line(memory: MemoryFigures) -> str:
    verdict = "within" if memory.within_target else "OVER"
    return (
        f"feature state, {memory.days:g} days: {memory.transactions:,} transactions, "
        f"{memory.cards:,} cards, {memory.terminals:,} terminals: "
        f"RSS +{memory.growth_bytes / _MIB:,.0f} MiB, "
        f"{memory.bytes_per_card:,.0f} bytes per card ({verdict} the "
        f"{memory.target_bytes / _MIB:,.0f} MiB target)"
    )


_OVERLOAD_FIGURES = (
    "saturation_per_second", "asked_per_second", "goodput_per_second", "refusals_by_status",
    "server_counted_score_calls", "calls",
)  # fmt: skip


def _overload_lines(figures: dict[str, object], checks: Sequence[Target]) -> list[str]:
    lines = ["overload (fraud-bench chaos --scenario overload, at the saturation found above):"]
    lines += [f"  {name} {figures[name]}" for name in _OVERLOAD_FIGURES if name in figures]
    lines += [f"  [{_verdict(check.met)}] {check.name}: {check.measured} ({check.limit})"
              + (f" - {check.detail}" if check.detail else "") for check in checks]  # fmt: skip
    return lines


def _target_lines(targets: Sequence[Target]) -> list[str]:
    rows = [["target", "row", "measured", "limit", "verdict"]]
    rows += [[t.name, t.row, t.measured, t.limit, _verdict(t.met)] for t in targets]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["targets (issue 17)"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]  # fmt: skip
    lines += [f"  {t.name}: {t.detail}" for t in targets if t.detail not in ("", "-")]
    return lines


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not judged"}[met]


def _loads(loads: dict[str, float]) -> str:
    return ", ".join(f"{name} {load:.2f}" for name, load in loads.items())
