"""`fraud-serve` as a child process, its standard output and standard error each in a file
of its own, its wall clock shifted if asked: for the tests of what the server writes where
(tests/test_card_data_scan.py) and of a server whose clock is wrong (tests/test_clock.py).

The clock is shifted inside the process, before the server is imported: `time.time` and
`time.time_ns`, which every wall-clock reading of the server goes through (validation, the
record logs' segment names and retention, the feature state's expiry). The monotonic clock
(deadlines, budgets) is left alone, as a wrong wall clock leaves it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT = 120.0  # seconds: imports and model loading on a busy shared machine
STOP_TIMEOUT = 60.0
_POLL_SECONDS = 0.05

# argv: the offset in seconds, then fraud-serve's arguments.
_BOOT = """
import runpy, sys, time
offset = float(sys.argv[1])
wall, wall_ns = time.time, time.time_ns
time.time = lambda: wall() + offset
time.time_ns = lambda: wall_ns() + round(offset * 1e9)
sys.argv = ["fraud-serve", *sys.argv[2:]]
runpy.run_module("service", run_name="__main__", alter_sys=True)
"""


class ClockedServer:
    """`fraud-serve ARGS` with its clock `clock_offset_seconds` ahead (behind if negative)."""

    def __init__(
        self,
        directory: Path,
        *arguments: str,
        environment: dict[str, str] | None = None,
        clock_offset_seconds: float = 0.0,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.stdout_path = directory / "stdout.log"
        self.stderr_path = directory / "stderr.log"
        env = {name: value for name, value in os.environ.items() if not name.startswith("FRAUD_")}
        env |= {"FRAUD_LOGGING__FORMAT": "json"} | (environment or {})
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, repr(clock_offset_seconds), *arguments],
                stdout=stdout,
                stderr=stderr,
                env=env,
            )

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (grpc's own lines, if any, are skipped)."""
        records = []
        for line in self.stdout_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def wait_for(self, event: str) -> dict[str, Any]:
        """The first JSON log line whose event is `event`, once written."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            for record in self.lines():
                if record.get("event") == event:
                    return record
            assert self.process.poll() is None, f"exited before {event!r}:\n{self.output()}"
            time.sleep(_POLL_SECONDS)
        raise AssertionError(f"no {event!r} line:\n{self.output()}")

    def events(self) -> list[str]:
        return [str(record.get("event")) for record in self.lines()]

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def stop(self) -> int:
        """SIGTERM, then the exit status once the process has ended."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
