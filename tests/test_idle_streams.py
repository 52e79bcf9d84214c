"""Idle streams take no capacity from unary scoring, against `fraud-serve` as a real process:
with 1,000 `ScoreStream` calls open and sending nothing, none of 300 `Score` calls a second
is RESOURCE_EXHAUSTED (every one was when 256 idle streams held every in-flight slot, and
the streams beyond 256 were refused).

One second of each load (300 calls) is enough: while the streams held the slots, every
call was refused, so what is checked does not depend on the length.

The latency comparison is recorded, not asserted: on a shared two-core machine one run's
p99 against another's moves by more than the effect in question, and a run slowed by
other work on the machine can lose calls to their deadlines (benchmarks/RESULTS.md, "Idle
streams", has the figures and the command that measures them).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from benchmarks.measurements.idle_streams import STREAMS_KEPT_OPEN, measure_idle_streams
from tests.conftest import TrainedModel
from tests.server_process import ServerProcess

STREAMS = 1000
RATE = 300.0
SECONDS = 1.0  # 300 calls a load; the recorded measurement runs 10 s


def test_a_thousand_idle_streams_shed_no_unary_call(
    start_process: Callable[..., ServerProcess], trained_model: TrainedModel
) -> None:
    process = start_process(
        "--registry", str(trained_model.registry), "--host", "127.0.0.1", "--port", "0",
        "--metrics-port", "0",
        environment=STREAMS_KEPT_OPEN,
    )  # fmt: skip
    serving = process.wait_for("serving")
    result = measure_idle_streams(
        f"127.0.0.1:{serving['port']}",
        f"http://127.0.0.1:{serving['metrics_port']}/metrics",
        trained_model.history,
        streams=STREAMS,
        rate=RATE,
        seconds=SECONDS,
    )
    print(json.dumps(result.summary(), indent=2))  # the figures, in the test's output
    assert result.streams_open_on_server == STREAMS
    for run in (result.baseline, result.with_streams):
        assert run.statuses.get("RESOURCE_EXHAUSTED", 0) == 0
        assert run.statuses.get("OK", 0) > 0
