"""A `fraud-serve` the fault runs start, kill, restart and signal themselves.

Unlike `benchmarks.servers.launch.serving`, the state, decision and outcome logs live in a
directory the caller keeps (`files`), so a server killed and started again finds the same
state on the same port, and the records can be read after the run. The output of every
start goes to `<files>/server-<n>.log`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType

import psutil
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.servers.launch import STOP_TIMEOUT, ServerError, ServerSpec, wait_serving

ADMIN_TOKEN = "fraud-bench-admin-token-0123456789"  # loopback servers the harness starts


class ManagedServer:
    """One `fraud-serve` of `spec`, its files under `files`; `environment` adds settings.

    `wrap` puts a command in front of the server's (e.g. `unshare ...`): the server is then
    a child of that command, and its figures are read from the whole process tree.
    """

    def __init__(
        self,
        spec: ServerSpec,
        files: Path,
        environment: dict[str, str] | None = None,
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        self.spec = spec
        self.files = files
        self.environment = (
            {
                "FRAUD_DECISION_LOG__DIRECTORY": str(files / "decisions"),
                "FRAUD_OUTCOME_LOG__DIRECTORY": str(files / "outcomes"),
                "FRAUD_STATE__PATH": str(files / "state"),
                "FRAUD_ADMIN__TOKEN": ADMIN_TOKEN,
            }
            | spec.environment
            | (environment or {})
        )
        self._wrap = wrap
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return self.spec.target

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ServerError(f"{self.spec.name} is not running")
        return self._process.pid

    def start(self) -> float:
        """Start the server; return once it is SERVING, with the seconds that took."""
        self.files.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        started = time.monotonic()
        argv = self.spec.argv if self._wrap is None else self._wrap(self.spec.argv)
        with (self.files / f"server-{self.starts}.log").open("wb") as log:
            self._process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=os.environ | self.environment
            )
        try:
            wait_serving(self.spec, self._process)
        except BaseException:
            self.kill()
            raise
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL the server (and what it wrapped), no questions asked."""
        if self._process is None:
            return
        for process in self._tree():
            process.kill()
        self._process.wait(timeout=STOP_TIMEOUT)
        self._process = None

    def stop(self) -> int:
        """SIGTERM, then its exit status (killed, -9, if it does not stop in time)."""
        if self._process is None:
            return 0
        process, self._process = self._process, None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def signal(self, signum: int) -> None:
        """Send `signum` to the server itself (the innermost process of the tree)."""
        self._tree()[-1].send_signal(signum)

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the whole process tree now (0 if not running)."""
        total = 0
        for process in self._tree():
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def anonymous_bytes(self) -> int:
        """Anonymous resident memory of the tree (heap, stacks: not file mappings such as
        the LMDB state's, which its own bounds limit): where a leak shows."""
        total = 0
        for process in self._tree():
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1]) * 1024
        return total

    def state_mapping_bytes(self) -> int:
        """Resident pages of the LMDB feature state's file mapping (`data.mdb`) in the
        tree: the state grows with the traffic within its own bounds (`state.max_bytes`),
        so memory criteria about leaks leave it out."""
        total = 0
        for process in self._tree():
            try:
                smaps = Path(f"/proc/{process.pid}/smaps").read_text()
            except OSError:
                continue
            in_state = False
            for line in smaps.splitlines():
                fields = line.split()
                if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header
                    in_state = fields[-1].endswith("/data.mdb")
                elif in_state and fields and fields[0] == "Rss:":
                    total += int(fields[1]) * 1024
        return total

    def metrics(self) -> dict[str, float]:
        """The server's metrics now: `name{label="v",...}` to value (samples as exported)."""
        with urllib.request.urlopen(self.spec.metrics_urls[0], timeout=5) as response:
            text = response.read().decode()
        return {
            _sample_key(sample.name, sample.labels): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def swaps(self, since_wall: float) -> list[tuple[float, str]]:
        """The champion swaps the server logged (`model_swapped`), as (seconds after the
        wall time `since_wall`, version), in order."""
        swaps: list[tuple[float, str]] = []
        for line in self.log_text().splitlines():
            if '"model_swapped"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("alias") == "champion":
                at = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
                swaps.append((at.timestamp() - since_wall, record["version"]))
        return swaps

    def log_text(self) -> str:
        """Everything every start of the server wrote."""
        return "".join(
            (self.files / f"server-{n}.log").read_text(errors="replace")
            for n in range(1, self.starts + 1)
        )

    def _tree(self) -> list[psutil.Process]:
        if self._process is None:
            return []
        try:
            root = psutil.Process(self._process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def __enter__(self) -> ManagedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            status = self.stop()
            if status != 0:
                raise ServerError(f"{self.spec.name} exited {status} on SIGTERM (see its log)")
        else:
            self.kill()


def _sample_key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    inside = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{inside}}}"
