"""Tests for benchmarks.measurements.decision_log_cost: it runs and reports CPU per record."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_it_logs_the_records_and_reports_cpu_per_record(tmp_path: Path) -> None:
    """With the log on, one line of figures; the temporary log directory is cleaned up."""
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.measurements.decision_log_cost", "on",
         "--records", "200", "--rate", "100000", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert re.fullmatch(r"on: user \d+\.\d µs/record, system \d+\.\d µs/record\n", run.stdout)
    assert list(tmp_path.iterdir()) == []
