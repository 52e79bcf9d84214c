"""The highest open-loop rate of unary `Score` a server holds: p99 within a budget and no
call failing, found by stepping the rate up (short steps: a quick estimate, not
`fraud-bench saturate`'s measurement)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from benchmarks.faults.answers import failed, p99_ms
from benchmarks.faults.driver import RecordingLoad, phased_schedule
from benchmarks.faults.parallel_load import ParallelRecordingLoad
from benchmarks.load.traffic import Call

STEP_SECONDS = 3.0


def find_saturation(
    target: str,
    calls: Callable[[int], list[Call]],
    budget_ms: float,
    start: float = 200.0,
    step: float = 200.0,
    highest: float = 6000.0,
    client_processes: int = 0,
) -> float:
    """The highest rate held (`start` when even that is not held). `client_processes`
    above 0: the load comes from that many processes of grpc's sync API
    (`ParallelRecordingLoad`) instead of one grpc.aio process in this one."""
    held = start
    rate = start
    while rate <= highest:
        schedule = phased_schedule(calls(round(rate * STEP_SECONDS)), [(STEP_SECONDS, rate)])
        load: RecordingLoad | ParallelRecordingLoad = (
            ParallelRecordingLoad(target, schedule, processes=client_processes)
            if client_processes
            else RecordingLoad(target, schedule)
        )
        load.begin()
        records = load.join()
        p99 = p99_ms(records)
        print(
            f"fraud-bench: saturation step {rate:g}/s: p99 {p99:.1f} ms",
            file=sys.stderr,
            flush=True,
        )
        if failed(records) or p99 > budget_ms:
            break
        held = rate
        rate += step
    return held
