"""`fraud-bench fuzz`: generated calls across every RPC against one `fraud-serve`.

`count` cases from `benchmarks.faults.fuzz_cases` (hostile field values, and raw byte
mutations of valid messages sent without a serializer), `concurrency` in flight, against a
server this command starts (the admin service on, its token known). Judged:

    no crash            the server still runs, and stops with exit 0 on SIGTERM
    documented codes    every status is one the contract documents for its method
    scores in [0, 1]    every score answered (Score, streamed, batched) is finite, in [0, 1]
    no error logged     the server logged no line at level error (each is a bug)
    healthy after       health SERVING, and a fresh valid `Score` answered by the model
    memory flat         growth of the anonymous resident memory (heap, stacks) from the
                        first fifth of the cases (the warm-up: first calls of each kind,
                        the allocator's pools filling) to the end within
                        `MEMORY_LIMIT_MIB`, sampled every `SAMPLE_EVERY` cases; file-backed
                        pages are left out: the LMDB state's mapping grows with every new
                        card within the state's own bounds, and a busy machine evicts
                        library pages, which would hide a leak
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from benchmarks.faults.criteria import Criterion, Scenario, at_most, equal
from benchmarks.faults.fuzz_cases import (
    DOCUMENTED,
    HEALTH,
    SCORE,
    SCORE_BATCH,
    SCORE_STREAM,
    CaseMaker,
    FuzzCase,
)
from benchmarks.faults.server import ADMIN_TOKEN, ManagedServer
from benchmarks.load.traffic import load_history, new_run_id
from benchmarks.servers.launch import fraud_serve_spec
from service.grpc_api._proto.fraud.v1 import scoring_pb2

# 200 bytes a case over the 80% after the warm-up of 100,000 cases; the leaks found by
# this run grew the heap by 430, then 236 bytes a case (benchmarks/RESULTS.md).
MEMORY_LIMIT_MIB = 16.0
SAMPLE_EVERY = 1000
_MIB = 1024 * 1024
_TIMEOUT = 5.0
_EXAMPLES = 20


@dataclass(frozen=True)
class FuzzSettings:
    registry: Path
    data: Path
    out: Path
    count: int = 100_000
    concurrency: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.count <= 10_000_000 or not 1 <= self.concurrency <= 256:
            raise ValueError("--count must be 1 to 10,000,000 and --concurrency 1 to 256")


@dataclass
class _Tally:
    codes: Counter[str] = field(default_factory=Counter)
    undocumented: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    scores: int = 0
    bad_scores: int = 0
    mutated: int = 0
    rss: list[tuple[float, float]] = field(default_factory=list)
    anonymous: list[float] = field(default_factory=list)
    server_statuses: dict[str, int] = field(default_factory=dict)


def run_fuzz(settings: FuzzSettings) -> Scenario:
    """Start a server, send the cases, judge the criteria."""
    spec = fraud_serve_spec("fuzz", settings.registry)
    server = ManagedServer(spec, settings.out / "fuzz-server")
    server.start()
    try:
        before = server.metrics()
        started = time.monotonic()
        tally = asyncio.run(_send_all(server, settings))
        seconds = time.monotonic() - started
        tally.server_statuses = _server_statuses(before, server.metrics())
        healthy = asyncio.run(_healthy(server.target, settings.data))
        alive = server.alive()
    finally:
        status = server.stop()
    return _judge(settings, tally, seconds, alive, status, healthy, server.log_text())


def _server_statuses(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """The statuses the server itself counted (`fraud_rpc_requests_total`) over the run: a
    client can see another status than the one the server ended the call with (a stream
    written to after the server ended it)."""
    counted: dict[str, int] = {}
    for key, value in after.items():
        if key.startswith("fraud_rpc_requests_total{") and value > before.get(key, 0.0):
            inside = key[key.index("{") + 1 : -1].replace('"', "")
            labels = dict(part.split("=", 1) for part in inside.split(","))
            name = f"{labels['rpc']} {labels['code']}"
            counted[name] = int(value - before.get(key, 0.0))
    return dict(sorted(counted.items()))


async def _send_all(server: ManagedServer, settings: FuzzSettings) -> _Tally:
    maker = CaseMaker(settings.seed, new_run_id(), ADMIN_TOKEN)
    tally = _Tally()
    cases = iter(range(settings.count))
    start = time.monotonic()
    async with grpc.aio.insecure_channel(server.target) as channel:

        async def worker() -> None:
            for number in cases:
                case = maker.case()
                tally.mutated += case.mutated
                await _send(channel, case, number, tally)
                if number % SAMPLE_EVERY == 0:
                    _sample(server, tally, start)

        await asyncio.gather(*(worker() for _ in range(settings.concurrency)))
    _sample(server, tally, start)
    return tally


def _sample(server: ManagedServer, tally: _Tally, start: float) -> None:
    resident = server.rss_bytes() - server.state_mapping_bytes()
    tally.rss.append((time.monotonic() - start, resident / _MIB))
    tally.anonymous.append(server.anonymous_bytes() / _MIB)


async def _send(channel: grpc.aio.Channel, case: FuzzCase, number: int, tally: _Tally) -> None:
    metadata = case.metadata or None
    answers: list[bytes] = []
    try:
        if case.method == SCORE_STREAM:
            answers, code, details = await _stream(channel, case, metadata)
            if code != "OK":
                raise _StreamEnded(code, details)
        else:
            method: Any = channel.unary_unary(case.method)
            answers = [await method(case.payloads[0], timeout=_TIMEOUT, metadata=metadata)]
        code, details = "OK", ""
    except grpc.aio.AioRpcError as error:
        code, details = error.code().name, error.details() or ""
    except _StreamEnded as ended:
        code, details = ended.code, ended.details
    name = case.method.rsplit("/", 1)[1]
    tally.codes[f"{name} {code}"] += 1
    if code not in DOCUMENTED[case.method]:
        tally.undocumented[f"{name} {code}"] += 1
        if len(tally.examples) < _EXAMPLES:
            kind = "mutated" if case.mutated else "structured"
            tally.examples.append(f"case {number} ({kind}) {name}: {code} {details[:120]}")
    if case.method in (SCORE, SCORE_STREAM, SCORE_BATCH):
        for score in _scores(case.method, answers):
            tally.scores += 1
            tally.bad_scores += not (math.isfinite(score) and 0.0 <= score <= 1.0)


def _scores(method: str, answers: list[bytes]) -> list[float]:
    """The scores the answers carry, a batch's each."""
    if method == SCORE_BATCH:
        return [
            result.score
            for answer in answers
            for result in scoring_pb2.ScoreBatchResponse.FromString(answer).results
        ]
    return [scoring_pb2.ScoreResponse.FromString(answer).score for answer in answers]


class _StreamEnded(Exception):
    def __init__(self, code: str, details: str) -> None:
        self.code, self.details = code, details


async def _stream(
    channel: grpc.aio.Channel, case: FuzzCase, metadata: Any
) -> tuple[list[bytes], str, str]:
    """A stream's answers and the status the server ended it with, sent as a payment
    backend sends them: each transaction once the previous one is answered, then a
    half-close. A client that writes ahead cannot tell the server's status: when the
    server ends the call on a bad transaction while a later one is being written,
    grpc.aio's client reports INTERNAL "Internal error from Core" instead
    (grpc/grpc#36066, the write's failure overwrites the status received). Waiting for
    each answer leaves no write under way when the server ends the stream."""
    method: Any = channel.stream_stream(case.method)
    call: Any = method(timeout=_TIMEOUT, metadata=metadata)
    answers: list[bytes] = []
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        for payload in case.payloads:
            await call.write(payload)
            answer = await call.read()  # AioRpcError once the server ended the call
            if answer is grpc.aio.EOF:
                break
            answers.append(answer)
        else:
            await call.done_writing()
            while (answer := await call.read()) is not grpc.aio.EOF:
                answers.append(answer)
    code = await call.code()
    return answers, code.name, await call.details() or ""


async def _healthy(target: str, data: Path) -> bool:
    """Health SERVING and a fresh valid transaction scored by the model."""
    request = load_history(data, 1).requests[0]
    request.transaction.transaction_id = f"after-fuzz-{new_run_id()}"
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            check: Any = channel.unary_unary(
                HEALTH, response_deserializer=health_pb2.HealthCheckResponse.FromString
            )
            health = await check(health_pb2.HealthCheckRequest().SerializeToString(), timeout=5)
            score: Any = channel.unary_unary(
                SCORE, response_deserializer=scoring_pb2.ScoreResponse.FromString
            )
            answer = await score(request.SerializeToString(), timeout=5)
        except grpc.aio.AioRpcError:
            return False
    serving: bool = health.status == health_pb2.HealthCheckResponse.SERVING
    return serving and bool(answer.decision_source == scoring_pb2.DECISION_SOURCE_MODEL)


def _judge(
    settings: FuzzSettings,
    tally: _Tally,
    seconds: float,
    alive: bool,
    status: int,
    healthy: bool,
    log: str,
) -> Scenario:
    errors = [line for line in log.splitlines() if '"level": "error"' in line]
    fifth = len(tally.rss) // 5
    settled = tally.rss[fifth][1] if tally.rss else 0.0
    rss_growth = (tally.rss[-1][1] - settled) if tally.rss else 0.0
    growth = (tally.anonymous[-1] - tally.anonymous[fifth]) if tally.anonymous else 0.0
    criteria: list[Criterion] = [
        equal("no crash: running after, exit 0 on SIGTERM", (alive, status), (True, 0)),
        equal(
            "only documented status codes",
            sum(tally.undocumented.values()),
            0,
            "; ".join(tally.examples[:5]),
        ),
        equal(
            "every score finite and in [0, 1]", tally.bad_scores, 0, f"of {tally.scores:,} scores"
        ),
        equal(
            "no line logged at level error",
            len(errors),
            0,
            errors[0][:300] if errors else "",
        ),
        equal("healthy after: SERVING, a valid Score answered by the model", healthy, True),
        at_most(
            "memory flat: anonymous RSS (heap) growth after the first fifth",
            round(growth, 1),
            MEMORY_LIMIT_MIB,
            " MiB",
            f"RSS without the state's file mapping: {rss_growth:+.1f} MiB",
        ),
    ]
    return Scenario(
        "fuzz",
        criteria,
        figures={
            "cases": settings.count,
            "mutated": tally.mutated,
            "seconds": round(seconds, 1),
            "cases_per_second": round(settings.count / seconds, 1) if seconds else 0.0,
            "statuses": dict(sorted(tally.codes.items())),
            "server_statuses": tally.server_statuses,
            "undocumented": dict(tally.undocumented),
            "examples": tally.examples,
            "error_lines": len(errors),
            "rss_first_fifth_mib": round(settled, 1),
            "rss_end_mib": round(tally.rss[-1][1], 1) if tally.rss else 0.0,
        },
        series={
            "RSS without the state mapping (MiB)": (
                [t for t, _ in tally.rss],
                [m for _, m in tally.rss],
            ),
            "anonymous RSS (MiB)": ([t for t, _ in tally.rss], tally.anonymous),
        },
    )
