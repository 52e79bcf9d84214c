"""`python -m service` as a child process, with its JSON log lines at hand: the server as
operators run it, for tests that need a real process (signals, exit codes, hot reload).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT = 120.0  # seconds: imports and model loading on a busy shared machine


def server_files(directory: Path) -> dict[str, str]:
    """The settings that keep a server's decision and outcome logs and its feature state
    under `directory`, not in the working directory."""
    return {
        "FRAUD_DECISION_LOG__DIRECTORY": str(directory / "decisions"),
        "FRAUD_OUTCOME_LOG__DIRECTORY": str(directory / "outcomes"),
        "FRAUD_STATE__PATH": str(directory / "state"),
    }


class ServerProcess:
    """`python -m service ARGS` as a child process; its stdout and stderr are collected."""

    def __init__(self, *arguments: str, environment: dict[str, str] | None = None) -> None:
        env = {name: value for name, value in os.environ.items() if not name.startswith("FRAUD_")}
        env |= {"FRAUD_LOGGING__FORMAT": "json"} | (environment or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def wait_for(self, event: str) -> dict[str, Any]:
        """The next JSON log line whose event is `event`."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            line = self._lines.get(timeout=left)
            assert line is not None, f"exited before {event!r}:\n{self.text()}"
            record = _json(line)
            if record.get("event") == event:
                return record
        raise AssertionError(f"no {event!r} line:\n{self.text()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self) -> int:
        """The exit status, once the process has ended and its output is read."""
        status = self.process.wait(timeout=STARTUP_TIMEOUT)
        self._reader.join(timeout=STARTUP_TIMEOUT)
        return status

    def text(self) -> str:
        return "".join(self.output)

    def events(self) -> list[str]:
        """The events of the JSON log lines, in order (grpc's own lines are skipped)."""
        return [event for line in self.output if (event := _json(line).get("event"))]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.wait()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self.output.append(line)
                self._lines.put(line)
        self._lines.put(None)


def _json(line: str) -> dict[str, Any]:
    """A JSON log line as a dict; {} for anything else (grpc's own stderr lines)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}
