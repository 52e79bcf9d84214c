"""A load run against a server with callers configured: every call carries the caller's
token (unary calls, outcome reports and streams alike), and the token stays out of what the
run reports. `fraud-bench run` reads it from FRAUD_BENCH_TOKEN, never from its command
line."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.cli import main
from benchmarks.commands import TOKEN_VARIABLE
from benchmarks.load.client import Rpc
from benchmarks.load.traffic import Call, OutcomeMix, build_calls, load_history
from benchmarks.measurements.load_run import LoadSettings, measure
from benchmarks.servers.floor import EmptyFloorServicer
from service.grpc_api._proto.fraud.v1 import scoring_pb2
from tests.benchmarks.thread_server import ThreadServer

TOKEN = "a-load-run-caller-token-0123456789"


class RecordsAuthorization(EmptyFloorServicer):
    """Counts the `authorization` metadata each kind of call arrived with."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[tuple[str, str | None]] = Counter()

    def _note(self, rpc: str, context: Any) -> None:
        sent = dict(context.invocation_metadata() or ()).get("authorization")
        self.seen[rpc, sent] += 1

    async def Score(self, request: scoring_pb2.ScoreRequest, context: Any) -> Any:
        self._note("Score", context)
        return await super().Score(request, context)

    async def ReportOutcome(self, request: scoring_pb2.OutcomeRequest, context: Any) -> Any:
        self._note("ReportOutcome", context)
        return await super().ReportOutcome(request, context)

    async def ScoreStream(
        self, request_iterator: AsyncIterator[scoring_pb2.ScoreRequest], context: Any
    ) -> AsyncIterator[scoring_pb2.ScoreResponse]:
        self._note("ScoreStream", context)
        async for response in super().ScoreStream(request_iterator, context):
            yield response


@pytest.fixture(scope="module")
def calls(small_history: Path) -> list[Call]:
    return build_calls(load_history(small_history, 400), "token", OutcomeMix(share=1.0, lag=20))


@pytest.mark.parametrize("rpc", ["unary", "stream"])
def test_every_call_carries_the_token_and_the_result_does_not(calls: list[Call], rpc: Rpc) -> None:
    servicer = RecordsAuthorization()
    server = ThreadServer(servicer)
    try:
        load = LoadSettings(target=server.target, mode="open", rpc=rpc, seconds=0.5, rate=400.0)
        measurement = measure("token", load, calls, token=TOKEN)
    finally:
        server.stop()
    assert {sent for _rpc, sent in servicer.seen} == {f"Bearer {TOKEN}"}
    assert {rpc for rpc, _sent in servicer.seen} >= {"ReportOutcome"}
    assert TOKEN not in json.dumps(dataclasses.asdict(measurement), default=str)


def test_fraud_bench_run_sends_the_token_from_the_environment_and_reports_none(
    small_history: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FRAUD_BENCH_TOKEN reaches every call; the report (command line and settings
    included) never holds it."""
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    servicer = RecordsAuthorization()
    server = ThreadServer(servicer)
    try:
        arguments = ["run", "--target", server.target, "--data", str(small_history)]
        arguments += ["--out", str(tmp_path), "--seconds", "0.5", "--rate", "200"]
        assert main([*arguments, "--processes", "1"]) == 0
    finally:
        server.stop()
    assert {sent for _rpc, sent in servicer.seen} == {f"Bearer {TOKEN}"}
    assert TOKEN not in (tmp_path / "report.json").read_text()
