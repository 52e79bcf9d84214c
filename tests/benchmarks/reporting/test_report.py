"""Reports: the JSON written, the table printed, the charts drawn."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks.load.histograms import LatencyRecorder, percentile_spectrum, summarise, timeline
from benchmarks.measurements.load_run import LoadSettings, Measurement, Mode, ServerCost
from benchmarks.measurements.memory import MemoryFigures
from benchmarks.measurements.onnx_floor import InferenceTiming
from benchmarks.measurements.saturation import Saturation, Step
from benchmarks.measurements.server_latency import ServerLatency
from benchmarks.probes.machine import describe_run
from benchmarks.reporting.charts import write_charts
from benchmarks.reporting.report import REPORT_FILE, Report, Target, render_table, write_json

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def _measurement(name: str, mode: Mode = "open", answers: int = 2000) -> Measurement:
    """A measurement of `answers` answers over 4 s, 1 to 20 ms, with server figures."""
    recorder = LatencyRecorder()
    for i in range(answers):
        recorder.record(0.001 + (i % 20) / 1000, at=i * 4 / answers)
    return Measurement(
        name=name,
        settings=LoadSettings(
            target="127.0.0.1:50051", mode=mode, rpc="unary", seconds=4, rate=answers / 4
        ),
        calls_sent=answers + 20,
        achieved_rate=answers / 4,
        latency=summarise(recorder.overall),
        statuses={"OK": answers, "DEADLINE_EXCEEDED": 3},
        outcome_statuses={"OK": 20},
        decisions={"APPROVE": answers - 100, "DECLINE": 100},
        fallbacks=2,
        errors=3,
        client_cpu_share=[0.4, 0.38],
        client_cpu_us_per_call=150.0,
        client_run_queue_wait_share=[0.01, 0.02],
        client_gc_pause_max_ms=1.5,
        server=ServerCost(1.2, 600.0, 0.3, 0.05, 150 * 2**20, 1),
        server_latency=ServerLatency(answers, 0.6, 2.1),
        spectrum=percentile_spectrum(recorder.overall),
        timeline=timeline(recorder),
    )


@pytest.fixture
def report() -> Report:
    """A report with every section filled."""
    return Report(
        command="suite",
        run=describe_run(),
        command_line=["fraud-bench", "suite", "--out", "x"],
        settings={"rate": 500.0, "registry": Path("models")},
        measurements=[_measurement("serve-open-unary"), _measurement("closed", mode="closed")],
        onnx_alone=InferenceTiming(20_000, 33, 25.1, 24.0, 40.2),
        saturation=Saturation(
            50.0, [Step(500, 499, 3.1, 0, True), Step(1000, 700, 800.0, 0, False)], 500.0
        ),
        memory=MemoryFigures(
            30, 300_000, 5000, 10_000, 10, 20, 200 * 2**20, 41943.0, 500 * 2**20, True
        ),
        comparisons={"server_cpu_vs_floor_onnx": 2.5, "server_cpu_vs_floor_empty": None},
        targets=[
            Target("floor-onnx holds 2,000/s", "floor-onnx", "p99 3.10 ms", "p99 <= 5 ms", True),
            Target("cpu ratio", "serve-open-unary / floor-onnx", "2.50x", "<= 1.25x", False),
            Target(
                "stream sustained", "serve-open-stream-10000", "-", "-", None, "row not measured"
            ),
        ],
        overload={"saturation_per_second": 1500.0, "goodput_per_second": 1450.0, "calls": 9000},
        overload_checks=[
            Target("goodput during the overload", "overload", "1,450/s", ">= 1,350/s", True)
        ],
        loads={"serve-open-unary": 1.25, "end": 0.5},
    )


def test_json_carries_the_run_the_command_line_the_settings_and_every_section(
    report: Report, tmp_path: Path
):
    """report.json names the machine, commit and command, and holds each measurement."""
    path = write_json(report, tmp_path / "out")

    document = json.loads(path.read_text())
    assert path.name == REPORT_FILE
    assert {"date", "commit", "cpu", "cores"} <= document["run"].keys()
    assert document["command_line"] == ["fraud-bench", "suite", "--out", "x"]
    assert document["settings"]["registry"] == "models"
    first = document["measurements"][0]
    assert first["settings"]["target"] == "127.0.0.1:50051"
    assert {"p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms"} <= first["latency"].keys()
    assert first["statuses"] == {"OK": 2000, "DEADLINE_EXCEEDED": 3}
    assert first["server"]["cpu_us_per_answer"] == 600.0
    assert document["saturation"]["highest_held_rate"] == 500.0
    assert document["memory"]["bytes_per_card"] == 41943.0
    assert document["onnx_alone"]["features"] == 33
    assert document["targets"][1] == {
        "name": "cpu ratio",
        "row": "serve-open-unary / floor-onnx",
        "measured": "2.50x",
        "limit": "<= 1.25x",
        "met": False,
        "detail": "",
    }
    assert document["overload"]["goodput_per_second"] == 1450.0
    assert document["overload_checks"][0]["met"] is True
    assert document["loads"] == {"serve-open-unary": 1.25, "end": 0.5}


def test_table_has_a_row_per_measurement_and_every_section(report: Report):
    """The table shows rate, quantiles, errors, server CPU; then statuses, floors, search."""
    table = render_table(report)

    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("measurement"))
    row = next(line for line in lines if line.startswith("serve-open-unary "))
    cells = dict(zip(_cells(header), _cells(row), strict=True))
    assert cells["asked/s"] == cells["achieved/s"] == "500"
    latency = report.measurements[0].latency
    assert cells["p50"] == f"{latency.p50_ms:.2f}"
    assert cells["p99.9"] == f"{latency.p99_9_ms:.2f}"
    assert float(cells["max"]) == pytest.approx(20.0, rel=1e-3)
    assert cells["errors"] == "3"
    assert cells["server us/answer"] == "600"
    assert cells["server cpu/wait"] == "0.30/0.05"
    assert cells["client cpu/wait"] == "0.40/0.01 0.38/0.02"
    assert "32 in flight" in table
    assert "statuses DEADLINE_EXCEEDED 3 OK 2,000" in table
    assert "decisions APPROVE 1,900 DECLINE 100, fallback 2" in table
    assert "server's own p50/p99 0.60/2.10 ms" in table
    assert "server_cpu_vs_floor_onnx: 2.50x (target <= 1.25x)" in table
    assert "server_cpu_vs_floor_empty: not comparable, a run had errors" in table
    assert "highest rate held: 500/s" in table
    assert "NOT held" in table
    assert "mean 25.1 us" in table
    assert "41,943 bytes per card" in table
    assert "  goodput_per_second 1450.0" in table
    assert "  [met] goodput during the overload: 1,450/s (>= 1,350/s)" in table
    targets = {_cells(line)[0]: _cells(line) for line in lines if line.startswith("  ")}
    assert targets["floor-onnx holds 2,000/s"][-1] == "met"
    assert targets["cpu ratio"][-1] == "NOT met"
    assert targets["stream sustained"][-1] == "not judged"
    assert "  stream sustained: row not measured" in lines
    assert "at each row's start: serve-open-unary 1.25, end 0.50" in table


def test_charts_are_written_as_non_empty_pngs(report: Report, tmp_path: Path):
    """A spectrum, one timeline per measurement and the saturation chart, all real PNGs."""
    paths = write_charts(report, tmp_path)

    assert sorted(path.name for path in paths) == [
        "saturation.png",
        "spectrum.png",
        "timeline-closed.png",
        "timeline-serve-open-unary.png",
    ]
    for path in paths:
        assert path.read_bytes().startswith(PNG_SIGNATURE)
        assert path.stat().st_size > 10_000


def test_a_report_of_one_section_has_no_charts_for_the_others(tmp_path: Path):
    """A memory report has a table line and no charts."""
    report = Report(
        "memory",
        describe_run(),
        ["fraud-bench", "memory"],
        {},
        memory=MemoryFigures(30, 10, 2, 3, 10, 20, 10, 5.0, 500 * 2**20, True),
    )

    assert write_charts(report, tmp_path) == []
    assert "2 cards" in render_table(report)
    assert "measurement" not in render_table(report)
