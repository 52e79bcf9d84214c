"""Floor servers: the same `fraud.v1.FraudScoring` service and messages with (almost) nothing
behind them, to measure what gRPC alone costs, with the same harness as the real server.

    python -m benchmarks.servers.floor --kind empty --port N
    python -m benchmarks.servers.floor --kind onnx --model ARTIFACT/model.onnx --port N

`empty`: `Score` returns one fixed `ScoreResponse` (built once), `ScoreStream` and
`ScoreBatch` return it for every transaction, `ReportOutcome` returns an empty answer.
`onnx`: the same, except that each transaction first runs single-row ONNX inference of the
model (`benchmarks.measurements.onnx_floor.SingleRowModel`: the server's own `OnnxScorer`)
and the answer carries its score. That is the "bare gRPC + ONNX" floor the scoring server's
CPU per request is compared against.

Listens on 127.0.0.1 only, with standard grpc.health.v1 health checking (SERVING once the
model is loaded), one grpc.aio event loop as `fraud-serve` has. SIGTERM or SIGINT stops it
(calls in progress get a second), exit status 0; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Literal, get_args

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.model.artifact import read_manifest
from service.model.onnx_scorer import OnnxScorer

FloorKind = Literal["empty", "onnx"]
FLOOR_KINDS: tuple[FloorKind, ...] = get_args(FloorKind)
HOST = "127.0.0.1"
_SERVICE = scoring_pb2.DESCRIPTOR.services_by_name["FraudScoring"].full_name
_Context = grpc.aio.ServicerContext[scoring_pb2.ScoreRequest, scoring_pb2.ScoreResponse]
_OutcomeContext = grpc.aio.ServicerContext[scoring_pb2.OutcomeRequest, scoring_pb2.OutcomeResponse]
_InfoContext = grpc.aio.ServicerContext[scoring_pb2.GetModelInfoRequest, scoring_pb2.ModelInfo]
_BatchContext = grpc.aio.ServicerContext[
    scoring_pb2.ScoreBatchRequest, scoring_pb2.ScoreBatchResponse
]


class SingleRowModel:
    """The server's scorer, scoring one golden-sample row per call. One thread only."""

    def __init__(self, model: Path) -> None:
        """Load `model` (an artifact's model.onnx; its manifest.json must sit beside it)."""
        rows = read_manifest(model.parent).golden_sample.features
        self.features = len(rows[0])
        self._scorer = OnnxScorer(model, self.features)
        self._rows = itertools.cycle(rows)

    def predict(self) -> float:
        """The fraud probability of the next row."""
        return self._scorer.score_one(next(self._rows))


class EmptyFloorServicer(scoring_pb2_grpc.FraudScoringServicer):
    """Answers every transaction with one fixed response."""

    def __init__(self) -> None:
        self._fixed = scoring_pb2.ScoreResponse(
            score=0.0,
            decision=scoring_pb2.DECISION_APPROVE,
            model_version="floor",
            decision_source=scoring_pb2.DECISION_SOURCE_MODEL,
        )

    async def Score(
        self, request: scoring_pb2.ScoreRequest, context: _Context
    ) -> scoring_pb2.ScoreResponse:
        """The fixed response (the ONNX floor scores first)."""
        return self.answer(request)

    async def ScoreStream(
        self, request_iterator: AsyncIterator[scoring_pb2.ScoreRequest], context: _Context
    ) -> AsyncIterator[scoring_pb2.ScoreResponse]:
        """One answer per message, in order."""
        async for request in request_iterator:
            yield self.answer(request)

    async def ScoreBatch(
        self, request: scoring_pb2.ScoreBatchRequest, context: _BatchContext
    ) -> scoring_pb2.ScoreBatchResponse:
        """One answer per transaction, in order."""
        response = scoring_pb2.ScoreBatchResponse()
        response.results.extend([self.answer(one) for one in request.transactions])
        return response

    async def ReportOutcome(
        self, request: scoring_pb2.OutcomeRequest, context: _OutcomeContext
    ) -> scoring_pb2.OutcomeResponse:
        """An empty answer."""
        return scoring_pb2.OutcomeResponse()

    async def GetModelInfo(
        self, request: scoring_pb2.GetModelInfoRequest, context: _InfoContext
    ) -> scoring_pb2.ModelInfo:
        """A model info naming the floor, nothing more."""
        return scoring_pb2.ModelInfo(version="floor")

    def answer(self, request: scoring_pb2.ScoreRequest) -> scoring_pb2.ScoreResponse:
        """The answer to one transaction."""
        return self._fixed


class OnnxFloorServicer(EmptyFloorServicer):
    """Scores every transaction with single-row ONNX inference, nothing else."""

    def __init__(self, model: SingleRowModel) -> None:
        super().__init__()
        self._model = model

    def answer(self, request: scoring_pb2.ScoreRequest) -> scoring_pb2.ScoreResponse:
        """The model's score of the next golden row, in an otherwise fixed response."""
        response = scoring_pb2.ScoreResponse()
        response.CopyFrom(self._fixed)
        response.score = self._model.predict()
        return response


async def start_floor_server(
    servicer: scoring_pb2_grpc.FraudScoringServicer, port: int = 0
) -> tuple[grpc.aio.Server, int]:
    """A started server for `servicer` with health SERVING, on 127.0.0.1, and its port."""
    server = grpc.aio.server()
    scoring_pb2_grpc.add_FraudScoringServicer_to_server(servicer, server)
    checks = health_aio.HealthServicer()
    for service in (health.OVERALL_HEALTH, _SERVICE):
        await checks.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    bound = server.add_insecure_port(f"{HOST}:{port}")
    await server.start()
    return server, bound


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a floor until SIGTERM or SIGINT; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.servers.floor", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--kind", choices=FLOOR_KINDS, required=True, help="what answers")
    parser.add_argument("--model", type=Path, help="model.onnx of a published artifact (onnx)")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    args = parser.parse_args(argv)
    if (args.kind == "onnx") != (args.model is not None):
        parser.error("--model goes with --kind onnx, and only with it")
    servicer = (
        EmptyFloorServicer()
        if args.model is None
        else OnnxFloorServicer(SingleRowModel(args.model))
    )
    return asyncio.run(_serve(servicer, args.port))


async def _serve(servicer: EmptyFloorServicer, port: int) -> int:
    server, _bound = await start_floor_server(servicer, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
