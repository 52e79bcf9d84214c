"""A run's `Score` calls grouped into `ScoreBatch` calls, for `--rpc batch`.

Consecutive swipes go together, `size` at a time, in history order (a backend batching
its swipes sends them as they came); the outcome reports between them stay unary calls
of their own, sent before the batch that follows them. A batch is due when its last
transaction is due (a backend cannot send a batch before it holds the batch's last
swipe), so the rate stays in transactions per second and each transaction's latency runs
from its batch's due time to the batch's answer: the first transactions of a batch have
waited longer than that, which is the batching's price to the caller, and left out here.

The batch request is built from the swipes' serialized `ScoreRequest`s as bytes: field 1
of `ScoreBatchRequest` is a repeated `ScoreRequest`, whose encoding is each message's
bytes behind its tag and length, so no message is parsed again.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.load.traffic import Call, CallKind

_TRANSACTIONS_TAG = b"\x0a"  # field 1, length-delimited


def in_batches(
    calls: Sequence[Call], due: Sequence[float] | None, size: int
) -> tuple[list[Call], list[float] | None]:
    """`calls` with each `size` consecutive `Score` calls made one `ScoreBatch` call (the
    last batch may be smaller), and the due times of the calls that result (None: closed
    loop, no due times)."""
    if size < 1:
        raise ValueError("a batch holds at least one transaction")
    batched: list[Call] = []
    batched_due: list[float] = []
    waiting: list[bytes] = []
    last_due = 0.0
    for position, call in enumerate(calls):
        at = 0.0 if due is None else due[position]
        if call.kind is not CallKind.SCORE:
            batched.append(call)
            batched_due.append(at)
            continue
        waiting.append(call.payload)
        last_due = at
        if len(waiting) == size:
            batched.append(_batch_call(waiting))
            batched_due.append(at)
            waiting = []
    if waiting:
        batched.append(_batch_call(waiting))
        batched_due.append(last_due)
    return batched, None if due is None else batched_due


def _batch_call(payloads: list[bytes]) -> Call:
    body = b"".join(_TRANSACTIONS_TAG + _varint(len(one)) + one for one in payloads)
    return Call(CallKind.BATCH, body, len(payloads))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
