"""What `fuzz`, `reloads`, `chaos` and `soak` leave in `--out`: `report.json` (the run's
date, commit, machine and load average, the command line, every scenario's criteria and
figures), a table of the criteria on stdout, and one PNG per scenario with its time
series (`<scenario>.png`), one panel per series."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from benchmarks.faults.criteria import Scenario
from benchmarks.reporting.report import REPORT_FILE

_DPI = 110


@dataclass(frozen=True)
class FaultReport:
    command: str
    run: dict[str, object]
    command_line: list[str]
    settings: dict[str, object]
    scenarios: list[Scenario]

    @property
    def passed(self) -> bool:
        return all(scenario.passed for scenario in self.scenarios)


def write_report(report: FaultReport, directory: Path) -> list[Path]:
    """report.json and the charts, in `directory` (created if missing); their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REPORT_FILE
    document = dataclasses.asdict(report) | {"passed": report.passed}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    charts = [_chart(scenario, directory) for scenario in report.scenarios if scenario.series]
    return [path, *charts]


def render_criteria(report: FaultReport) -> str:
    """The criteria as plain text, scenario by scenario, with the verdict last."""
    run = report.run
    lines = [
        f"fraud-bench {report.command} | {run.get('date')} | commit {run.get('commit')} | "
        f"{run.get('cpu')} x {run.get('cores')} | load {run.get('load_average_1m')}"
    ]
    for scenario in report.scenarios:
        lines += ["", f"{scenario.name}: {'PASS' if scenario.passed else 'FAIL'}"]
        for criterion in scenario.criteria:
            verdict = {True: "pass", False: "FAIL", None: "not judged"}[criterion.passed]
            line = f"  [{verdict}] {criterion.name}: {criterion.measured} ({criterion.limit})"
            lines.append(line + (f" - {criterion.detail}" if criterion.detail else ""))
        figures = ", ".join(
            f"{name} {value}" for name, value in scenario.figures.items() if _short(value)
        )
        if figures:
            lines.append(f"  figures: {figures}")
    lines += ["", f"verdict: {'PASS' if report.passed else 'FAIL'}"]
    return "\n".join(lines) + "\n"


def _short(value: object) -> bool:
    return isinstance(value, int | float | str) and len(str(value)) < 40


def _chart(scenario: Scenario, directory: Path) -> Path:
    # Imported here, the one use: matplotlib is most of a second to import, and a report
    # is built (and its criteria judged) without it.
    from matplotlib.figure import Figure

    panels = list(scenario.series.items())
    figure = Figure(figsize=(9.0, 2.4 * len(panels) + 0.8))
    axes_list = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axes, (name, (x, y)) in zip(axes_list, panels, strict=True):
        axes.plot(x, y, marker="." if len(x) < 200 else None, linewidth=1)
        axes.set_ylabel(name, fontsize="small")
        axes.grid(True, alpha=0.3)
    axes_list[0].set_title(f"{scenario.name}: {'PASS' if scenario.passed else 'FAIL'}")
    axes_list[-1].set_xlabel("seconds from the start")
    figure.tight_layout()
    path = directory / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', scenario.name)}.png"
    figure.savefig(path, dpi=_DPI)
    return path
