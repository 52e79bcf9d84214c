"""Do idle streams take capacity from unary calls? The same open-loop `Score` load, measured
without and then with many open `ScoreStream` calls that send nothing.

    python -m benchmarks.measurements.idle_streams --registry DIR --data FILE
        [--streams 1000] [--rate 300] [--seconds 10] [--stream-connections 20] [--out DIR]

Starts `fraud-serve` on free loopback ports (its streams allowed to idle past the run),
measures `--rate` unary `Score` calls a second for `--seconds` (the baseline), then opens
`--streams` streams over `--stream-connections` connections from a process of their own
(each stream sends one transaction, reads its answer, then sends nothing: a client that
keeps its stream open), checks that the server counts them open, and measures the same
load again, on the following rows of the history. Prints both runs' latency percentiles
and statuses, and the ratio of their p99s. Before the stream budget was separate, 256
such streams took every in-flight slot and every unary call was RESOURCE_EXHAUSTED.

`measure_idle_streams` is the measurement against a server already running (the test
in tests/test_idle_streams.py starts its own).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import multiprocessing
import urllib.request
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from benchmarks.load.traffic import NO_OUTCOMES, build_calls, load_history, new_run_id
from benchmarks.measurements.load_run import LoadSettings, Measurement, measure
from benchmarks.servers.launch import fraud_serve_spec, serving
from service.grpc_api._proto.fraud.v1 import scoring_pb2

# Streams the holder opens on one connection at most: fewer than the server's cap.
_CALLS_PER_CONNECTION = 100
_OPEN_TIMEOUT = 120.0
_SCORE_STREAM = "/fraud.v1.FraudScoring/ScoreStream"
# The server's settings for the measurement: no stream is ended for idling, or for its
# age, while it is measured; no per-request log line.
STREAMS_KEPT_OPEN = {
    "FRAUD_CONNECTIONS__STREAM_IDLE_SECONDS": "3600",
    "FRAUD_CONNECTIONS__STREAM_MAX_SECONDS": "3600",
    "FRAUD_LOGGING__SAMPLE_RATE": "0",
}


@dataclass(frozen=True)
class IdleStreamsResult:
    """Both runs, and what the comparison says (latency in ms)."""

    streams: int
    streams_open_on_server: float
    baseline: Measurement
    with_streams: Measurement

    @property
    def p99_ratio(self) -> float:
        """The p99 with idle streams over the p99 without."""
        return self.with_streams.latency.p99_ms / self.baseline.latency.p99_ms

    def summary(self) -> dict[str, Any]:
        """The figures worth recording, as JSON-ready values."""
        return {
            "streams": self.streams,
            "streams_open_on_server": self.streams_open_on_server,
            "p99_ratio": round(self.p99_ratio, 3),
            **{
                name: {
                    "rate": run.settings.rate,
                    "seconds": run.settings.seconds,
                    "achieved_rate": run.achieved_rate,
                    "latency_ms": asdict(run.latency),
                    "statuses": run.statuses,
                    "fallbacks": run.fallbacks,
                }
                for name, run in (("baseline", self.baseline), ("with_streams", self.with_streams))
            },
        }


def measure_idle_streams(
    target: str,
    metrics_url: str,
    history: Path,
    *,
    streams: int = 1000,
    stream_connections: int = 20,
    rate: float = 300.0,
    seconds: float = 10.0,
) -> IdleStreamsResult:
    """The load without, then with, `streams` idle streams open against `target`."""
    if streams > stream_connections * _CALLS_PER_CONNECTION:
        raise ValueError(f"{streams} streams need more than {stream_connections} connections")
    load = LoadSettings(target=target, mode="open", rpc="unary", seconds=seconds, rate=rate)
    count = load.calls_needed()
    rows = load_history(history, 2 * count + streams)
    run_id = new_run_id()
    baseline = measure("baseline", load, build_calls(rows, run_id, NO_OUTCOMES, 0, count))
    openers = [request.SerializeToString() for request in rows.requests[2 * count :]]
    with _IdleStreams(target, openers, stream_connections) as opened:
        if opened != streams:
            raise RuntimeError(f"only {opened} of {streams} streams were answered")
        open_on_server = _gauge(metrics_url, "fraud_streams_open")
        loaded = measure("with_streams", load, build_calls(rows, run_id, NO_OUTCOMES, count, count))
    return IdleStreamsResult(streams, open_on_server, baseline, loaded)


class _IdleStreams:
    """`len(openers)` streams held open by a process of their own, each having sent one of
    `openers` and read its answer; closed on leaving."""

    def __init__(self, target: str, openers: list[bytes], connections: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, child = context.Pipe()
        self._process = context.Process(
            target=_hold_streams, args=(target, openers, connections, child), daemon=True
        )

    def __enter__(self) -> int:
        self._process.start()
        if not self._control.poll(_OPEN_TIMEOUT):
            self._process.kill()
            raise RuntimeError("the streams were not open in time")
        opened: int = self._control.recv()
        return opened

    def __exit__(self, *_exception: object) -> None:
        self._control.send("close")
        self._process.join(_OPEN_TIMEOUT)
        if self._process.is_alive():
            self._process.kill()


def _hold_streams(target: str, openers: list[bytes], connections: int, control: Connection) -> None:
    asyncio.run(_hold(target, openers, connections, control))


async def _hold(target: str, openers: list[bytes], connections: int, control: Connection) -> None:
    # One TCP connection per channel: channels to one target otherwise share a subchannel.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    methods: list[grpc.aio.StreamStreamMultiCallable[bytes, scoring_pb2.ScoreResponse]] = [
        channel.stream_stream(
            _SCORE_STREAM, response_deserializer=scoring_pb2.ScoreResponse.FromString
        )
        for channel in channels
    ]
    calls = [methods[n % connections]() for n in range(len(openers))]

    async def open_one(call: Any, opener: bytes) -> bool:
        await call.write(opener)
        return isinstance(await call.read(), scoring_pb2.ScoreResponse)

    answered = await asyncio.gather(
        *(open_one(call, opener) for call, opener in zip(calls, openers, strict=True)),
        return_exceptions=True,
    )
    control.send(sum(1 for ok in answered if ok is True))
    await asyncio.get_running_loop().run_in_executor(None, control.recv)
    for call in calls:
        call.cancel()
    for channel in channels:
        await channel.close()


def _gauge(metrics_url: str, name: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="history CSV")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--stream-connections", type=int, default=20)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    spec = fraud_serve_spec("idle-streams", args.registry)
    spec = dataclasses.replace(spec, environment=spec.environment | STREAMS_KEPT_OPEN)
    with serving(spec, args.out) as server:
        result = measure_idle_streams(
            server.target,
            server.probe.metrics_urls[0],
            args.data,
            streams=args.streams,
            stream_connections=args.stream_connections,
            rate=args.rate,
            seconds=args.seconds,
        )
    print(json.dumps(result.summary(), indent=2))


if __name__ == "__main__":
    main()
