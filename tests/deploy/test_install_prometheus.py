"""scripts/install-prometheus: nothing to do when Prometheus is there, a clear failure when
it is missing and cannot be installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-prometheus"
TIMEOUT = 60.0


def run_script(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        env={"PATH": path},
        timeout=TIMEOUT,
        check=False,
    )


def test_with_promtool_and_prometheus_on_path_it_does_nothing() -> None:
    """Both tools found (as scripts/test leaves them): exit 0 without installing anything."""
    tools = ("promtool", "prometheus")
    assert all(shutil.which(tool) for tool in tools), "run scripts/install-prometheus first"
    result = run_script(os.environ["PATH"])
    assert (result.returncode, result.stderr) == (0, "")


def test_without_them_or_a_way_to_install_it_fails_saying_what_to_do(tmp_path: Path) -> None:
    """Nothing on PATH, not even apt-get: exit 1 with the reason and what to install."""
    result = run_script(str(tmp_path))
    assert result.returncode == 1
    assert "apt-get is not available" in result.stderr
    assert "promtool and prometheus are on PATH" in result.stderr
