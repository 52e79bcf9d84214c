"""scripts/install-redis: nothing to do when redis-server is there, a clear failure when it
is missing and cannot be installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-redis"
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


def test_with_redis_server_on_path_it_does_nothing() -> None:
    """redis-server found (as scripts/test leaves it): exit 0 without installing anything."""
    assert shutil.which("redis-server"), "run scripts/install-redis first"
    result = run_script(os.environ["PATH"])
    assert (result.returncode, result.stderr) == (0, "")


def test_without_it_or_a_way_to_install_it_fails_saying_what_to_do(tmp_path: Path) -> None:
    """Nothing on PATH, not even apt-get: exit 1 with the reason and what to install."""
    result = run_script(str(tmp_path))
    assert result.returncode == 1
    assert "apt-get is not available" in result.stderr
    assert "redis-server is on PATH" in result.stderr
