"""scripts/install-prometheus, install-redis and install-kubectl: nothing to do when their
tools are there, a clear failure when they are missing and cannot be installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
TIMEOUT = 60.0
# Each script, the tools it provides, and how its failure says what to install.
INSTALLERS = [
    ("install-prometheus", ("promtool", "prometheus"), "promtool and prometheus are on PATH"),
    ("install-redis", ("redis-server",), "redis-server is on PATH"),
    ("install-kubectl", ("kubectl",), "so that it is on PATH"),
]


def run_script(script: str, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(SCRIPTS / script)],
        capture_output=True,
        text=True,
        env={"PATH": path},
        timeout=TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize(("script", "tools", "advice"), INSTALLERS)
def test_with_its_tools_on_path_it_does_nothing(
    script: str, tools: tuple[str, ...], advice: str
) -> None:
    """The tools found (as scripts/test leaves them): exit 0 without installing anything."""
    assert all(shutil.which(tool) for tool in tools), f"run scripts/{script} first"
    result = run_script(script, os.environ["PATH"])
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(("script", "tools", "advice"), INSTALLERS)
def test_without_them_or_a_way_to_install_them_it_fails_saying_what_to_do(
    script: str, tools: tuple[str, ...], advice: str, tmp_path: Path
) -> None:
    """Nothing on PATH, not even apt-get: exit 1 with the reason and what to install."""
    result = run_script(script, str(tmp_path))
    assert result.returncode == 1
    assert "apt-get is not available" in result.stderr
    assert advice in result.stderr
