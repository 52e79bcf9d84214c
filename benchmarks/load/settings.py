"""The settings of a load, checked against the harness's bounds: which loop, RPC and
arrivals, how fast, how long and from how many clients, and which frauds get an outcome
report.

Standard library only: `fraud-bench`'s parser and the suite's settings need these and no
more, where the client, the traffic and the measurement bring grpc, numpy and protobuf.
The modules that defined them before (`benchmarks.load.client`, `.schedule`, `.traffic`,
`benchmarks.measurements.load_run`, `benchmarks.servers.launch`) still export them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

# The only host load goes to.
LOCAL_HOST = "127.0.0.1"
Mode = Literal["open", "closed"]
MODES: tuple[Mode, ...] = get_args(Mode)
Rpc = Literal["unary", "stream", "batch"]
RPCS: tuple[Rpc, ...] = get_args(Rpc)
Arrivals = Literal["constant", "poisson"]
ARRIVALS: tuple[Arrivals, ...] = get_args(Arrivals)
MAX_RATE = 50_000.0
MAX_SECONDS = 120.0
MAX_PROCESSES = 8
MAX_IN_FLIGHT = 10_000
MAX_BATCH_SIZE = 1024


@dataclass(frozen=True)
class LoadSettings:
    """How one measurement loads the server.

    Open loop: `rate` calls per second for `seconds`, `arrivals` constant or Poisson; at
    most `max_in_flight` unary calls in flight per process (stream messages are not
    capped). Closed loop: `in_flight` calls in flight in all, for `seconds` or until the
    calls run out. `connections` and `streams` are per process; `timeout` is each unary
    call's deadline and the time the end of the run waits for late answers. `method`:
    the path unary `Score` calls go to instead, on a peer server (`ClientJob.method`).
    `rpc` "batch": the swipes go `batch_size` to a `ScoreBatch` call, due when its last
    swipe is (`benchmarks.load.batches`); `rate` and the answers stay per transaction.
    """

    target: str
    mode: Mode
    rpc: Rpc
    seconds: float
    rate: float = 1000.0
    arrivals: Arrivals = "constant"
    in_flight: int = 32
    max_in_flight: int = 1000
    processes: int = 1
    connections: int = 1
    streams: int = 4
    timeout: float = 1.0
    seed: int = 0
    method: str | None = None
    batch_size: int = 32

    def __post_init__(self) -> None:
        for address in self.target.split(","):  # several: replicas balanced one by one
            host, _, port = address.rpartition(":")
            if host != LOCAL_HOST or not port.isdigit():
                raise ValueError(
                    f"the target must be {LOCAL_HOST}:PORT (several comma-separated), "
                    f"not {self.target!r}"
                )
        if not (0 < self.rate <= MAX_RATE and 0 < self.seconds <= MAX_SECONDS):
            raise ValueError(
                f"rate must be in (0, {MAX_RATE:g}] and seconds in (0, {MAX_SECONDS:g}]"
            )
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise ValueError(f"processes must be 1 to {MAX_PROCESSES}")
        if not self.processes <= self.in_flight <= MAX_IN_FLIGHT or self.max_in_flight < 1:
            raise ValueError(f"in_flight must be processes to {MAX_IN_FLIGHT}; max_in_flight 1+")
        if self.connections < 1 or self.streams < 1 or self.timeout <= 0:
            raise ValueError("connections and streams must be 1 or more, timeout above 0")
        if self.method is not None and self.rpc != "unary":
            raise ValueError("a peer server's method is called unary only")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH_SIZE}")

    def calls_needed(self) -> int:
        """Calls an open-loop run sends (a closed loop sends what it has time for)."""
        return round(self.rate * self.seconds)


# The settings of a load that a command's options and the suite's settings also carry, under
# the same names; target, mode, RPC and rate are each measurement's own.
SHARED_SETTINGS = (
    "seconds",
    "arrivals",
    "in_flight",
    "max_in_flight",
    "processes",
    "connections",
    "streams",
    "timeout",
    "seed",
    "batch_size",
)


def load_with(source: object, target: str, mode: Mode, rpc: Rpc, rate: float) -> LoadSettings:
    """The load at `rate` against `target`, each of its `SHARED_SETTINGS` read from `source`
    (a command line's options, the suite's settings) or, where `source` has none, its
    default (`seconds` has none: a source must give it); ValueError if out of bounds."""
    given = {name: getattr(source, name) for name in SHARED_SETTINGS if hasattr(source, name)}
    return LoadSettings(target=target, mode=mode, rpc=rpc, rate=rate, **given)


@dataclass(frozen=True)
class OutcomeMix:
    """Which frauds get an outcome report, and how long after their swipe.

    `share` of the fraud rows (chosen at random with `seed`) are reported `lag` calls after
    their swipe; a report that would fall after the last swipe of the run is not sent.
    """

    share: float = 1.0
    lag: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0 or self.lag < 1:
            raise ValueError("the outcome share must be in [0, 1] and the lag at least 1")


NO_OUTCOMES = OutcomeMix(share=0.0)
