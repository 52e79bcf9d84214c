"""What the records of a load say: failures, latency by window, versions after swaps."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from benchmarks.faults.driver import OK, OUTCOME, Record


def scores(records: Sequence[Record]) -> list[Record]:
    """The `Score` calls (unary and streamed), by send time."""
    return [record for record in records if record.kind != OUTCOME]


def failed(records: Sequence[Record]) -> list[Record]:
    """Calls that did not end OK."""
    return [record for record in records if record.code != OK]


# An outcome for a transaction the server does not hold (scored by the fallback, which
# counts nothing, or before the state forgot it) is NOT_FOUND by contract, not a failure.
_OUTCOME_ANSWERS = frozenset({OK, "NOT_FOUND"})


def failures(records: Sequence[Record]) -> list[Record]:
    """Score calls that did not end OK, and outcome reports that ended neither OK nor
    NOT_FOUND."""
    return [
        r for r in records if r.code != OK and (r.kind != OUTCOME or r.code not in _OUTCOME_ANSWERS)
    ]


def p99_ms(records: Sequence[Record]) -> float:
    """p99 of the answered calls' latency from their due time, ms (0 without any)."""
    latencies = [record.done - record.sent for record in records if record.code == OK]
    return float(np.percentile(latencies, 99) * 1e3) if latencies else 0.0


def between(records: Sequence[Record], start: float, end: float) -> list[Record]:
    """The records sent in [start, end)."""
    return [record for record in records if start <= record.sent < end]


def per_second(
    records: Sequence[Record], length: float
) -> tuple[list[float], list[float], list[float]]:
    """Per second sent: seconds, OK answers, and the p99 (ms) of that second's answers."""
    seconds = list(range(int(length) + 1))
    buckets: list[list[float]] = [[] for _ in seconds]
    for record in records:
        second = int(record.sent)
        if record.code == OK and 0 <= second < len(buckets):
            buckets[second].append(record.done - record.sent)
    p99 = [float(np.percentile(b, 99) * 1e3) if b else float("nan") for b in buckets]
    return [float(s) for s in seconds], [float(len(b)) for b in buckets], p99


def stale_answers(
    records: Sequence[Record], promotions: Sequence[tuple[float, str]], tolerance: float = 0.0
) -> int:
    """Answers from an older promotion's version sent after a newer one's had answered.

    `promotions`: (time, version) of each promotion, in order, the first the version served
    at the start. An answer belongs to the latest promotion of its version made before it
    came back; it is stale when an answer of a later promotion had come back before it was
    sent (a call in flight at a swap may still get the old version; one sent afterwards may
    not). `tolerance`: how much later than the answer a swap's time may be and still count
    as before it (a logged swap time comes after the swap itself).
    """
    times = [at for at, _ in promotions]
    answered = [r for r in records if r.code == OK and r.kind != OUTCOME and r.version]

    def epoch(record: Record) -> int:
        index = bisect.bisect_right(times, record.done + tolerance) - 1
        while index > 0 and promotions[index][1] != record.version:
            index -= 1
        return index

    epochs = [(record.done, epoch(record)) for record in answered]
    by_arrival = sorted(epochs)
    arrivals = [done for done, _ in by_arrival]
    newest_so_far = list(np.maximum.accumulate([e for _, e in by_arrival])) if by_arrival else []
    stale = 0
    for record, (_, own) in zip(answered, epochs, strict=True):
        index = bisect.bisect_left(arrivals, record.sent) - 1
        if index >= 0 and newest_so_far[index] > own:
            stale += 1
    return stale


def epochs_answered(records: Sequence[Record], promotions: Sequence[tuple[float, str]]) -> int:
    """Promotions whose version answered at least once between it and the next one."""
    answered = sorted((r.done, r.version) for r in records if r.code == OK and r.version)
    arrivals = [done for done, _ in answered]
    count = 0
    for k, (at, version) in enumerate(promotions):
        until = promotions[k + 1][0] if k + 1 < len(promotions) else float("inf")
        start, end = bisect.bisect_left(arrivals, at), bisect.bisect_left(arrivals, until)
        count += any(answered[i][1] == version for i in range(start, end))
    return count
