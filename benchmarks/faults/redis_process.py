"""A `redis-server` the store scenario kills and starts again on the same port (loopback,
no persistence: a restarted server is empty, as one restored without its data would be)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from benchmarks.servers.launch import LOCAL_HOST, ServerError, free_ports

START_TIMEOUT = 20.0


class RedisProcess:
    def __init__(self, directory: Path) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise ServerError("redis-server is not on PATH (scripts/install-redis installs it)")
        self._executable = executable
        self._directory = directory
        self.port = free_ports(1)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOCAL_HOST}:{self.port}/0"

    def start(self) -> None:
        """Start, and return once it answers PING."""
        self._directory.mkdir(parents=True, exist_ok=True)
        arguments = [self._executable, "--port", str(self.port), "--bind", LOCAL_HOST]
        arguments += ["--save", "", "--appendonly", "no", "--dir", str(self._directory)]
        arguments += ["--maxmemory", "256mb", "--maxmemory-policy", "volatile-lru"]
        arguments += ["--logfile", str(self._directory / "redis.log")]
        self._process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise ServerError(f"redis-server did not start (see {self._directory}/redis.log)")
            time.sleep(0.01)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=START_TIMEOUT)
            self._process = None

    def answers(self) -> bool:
        try:
            with socket.create_connection((LOCAL_HOST, self.port), timeout=0.2) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False
