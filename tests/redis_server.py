"""A real `redis-server` for the tests (scripts/install-redis puts one on PATH): its own free
loopback port, no persistence, started and stopped by the test, restartable on the same
port to play a server that went away and came back."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from benchmarks.servers.launch import free_ports

START_TIMEOUT = 20.0  # seconds: a busy shared machine
_PING_TIMEOUT = 0.5


class RedisServer:
    """`redis-server` on 127.0.0.1, its working files and log in `directory`."""

    def __init__(self, directory: Path, *, maxmemory: str | None = "256mb") -> None:
        """`maxmemory` None: no memory bound (the server's default)."""
        executable = shutil.which("redis-server")
        assert executable is not None, "redis-server is not on PATH: run scripts/install-redis"
        self._executable = executable
        self._directory = directory
        self._maxmemory = maxmemory
        self.port = free_ports(1)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, timeout: float = START_TIMEOUT) -> redis.Redis:
        """A client of its own, which tries each command once."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )

    def start(self) -> None:
        """Start on `port` and return once the server answers PING."""
        arguments = [self._executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        arguments += ["--save", "", "--appendonly", "no", "--dir", str(self._directory)]
        arguments += ["--logfile", str(self._directory / "redis.log")]
        if self._maxmemory is not None:
            arguments += ["--maxmemory", self._maxmemory, "--maxmemory-policy", "volatile-lru"]
        self._process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            exited = self._process.poll()
            assert exited is None, f"redis-server exited ({exited}): {self.log()[-2000:]}"
            assert time.monotonic() < deadline, f"redis-server silent: {self.log()[-2000:]}"
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (its data goes with it: nothing is saved)."""
        if self._process is None:
            return
        self._process.terminate()
        self._process.wait(timeout=START_TIMEOUT)
        self._process = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def flush(self) -> None:
        """Empty every database and zero the server's statistics."""
        client = self.client()
        client.flushall()
        client.config_resetstat()
        client.close()

    def log(self) -> str:
        path = self._directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self.resume()  # a paused server does not end on SIGTERM
        self.stop()

    def _answers(self) -> bool:
        client = self.client(_PING_TIMEOUT)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()
