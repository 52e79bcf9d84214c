"""Running `fraud-train` in tests: the installed command in a process of its own, as a user
runs it, or `main` in this process, where a test can see its output and send it signals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.cli.main import main

FRAUD_TRAIN = str(Path(sys.executable).with_name("fraud-train"))


def run(
    *args: str | Path | int, check: bool = True, environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed `fraud-train` run with `args` (and `environment` over this process's);
    with `check`, the test fails unless it exits 0."""
    result = subprocess.run(
        [FRAUD_TRAIN, *map(str, args)],
        capture_output=True,
        text=True,
        # Generous: `train --dask local:2` on issue 18's 316,615 transactions took about 60 s
        # here, and ran past 300 s while other test suites loaded the 2-core box.
        timeout=900,
        env=None if environment is None else {**os.environ, **environment},
    )
    if check and result.returncode != 0:
        pytest.fail(f"fraud-train {args[0]} exited {result.returncode}: {result.stderr}")
    return result


def exit_code(argv: list[str]) -> int:
    """What `fraud-train` exits with: main's result, or the code of argparse's SystemExit."""
    try:
        return main(argv)
    except SystemExit as exited:
        return int(exited.code or 0)
