"""The floor servers and single-row ONNX inference of a real trained model."""

from __future__ import annotations

import grpc
import pytest

from benchmarks.measurements.onnx_floor import time_single_row
from benchmarks.servers.floor import EmptyFloorServicer, OnnxFloorServicer, SingleRowModel, main
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.model.artifact import ONNX_MODEL_FILE, read_manifest
from service.model.registry import Registry
from tests.benchmarks.thread_server import ThreadServer
from tests.conftest import TrainedModel


@pytest.fixture(scope="module")
def model_path(trained_model: TrainedModel):
    """The champion's model.onnx."""
    return Registry(trained_model.registry).artifact_dir(trained_model.version) / ONNX_MODEL_FILE


def _request(transaction_id: str) -> scoring_pb2.ScoreRequest:
    return scoring_pb2.ScoreRequest(
        transaction=scoring_pb2.Transaction(transaction_id=transaction_id)
    )


def test_single_row_inference_gives_the_golden_scores(model_path):
    """The rows scored are the artifact's golden sample, in turn, with training's scores."""
    golden = read_manifest(model_path.parent).golden_sample
    model = SingleRowModel(model_path)

    scores = [model.predict() for _ in golden.scores]

    assert model.features == len(golden.features[0])
    assert scores == pytest.approx(golden.scores, abs=1e-5)


def test_timing_single_row_inference_counts_its_calls(model_path):
    """The timing makes the calls asked for and reports ordered quantiles."""
    timing = time_single_row(model_path, calls=300)

    assert timing.calls == 300
    assert 0 < timing.p50_us <= timing.p99_us


def test_onnx_floor_answers_each_rpc_with_the_models_score(model_path):
    """Score and ScoreStream answer with golden scores in turn; ReportOutcome answers empty."""
    expected = read_manifest(model_path.parent).golden_sample.scores[:3]
    server = ThreadServer(OnnxFloorServicer(SingleRowModel(model_path)))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = scoring_pb2_grpc.FraudScoringStub(channel)
            first = stub.Score(_request("a"), timeout=10)
            streamed = list(stub.ScoreStream(iter([_request("b"), _request("c")]), timeout=10))
            outcome = stub.ReportOutcome(scoring_pb2.OutcomeRequest(), timeout=10)
    finally:
        server.stop()

    assert [first.score, *(r.score for r in streamed)] == pytest.approx(expected, abs=1e-5)
    assert outcome == scoring_pb2.OutcomeResponse()


def test_empty_floor_answers_every_message_of_a_stream():
    """The empty floor answers each stream message with its fixed response."""
    server = ThreadServer(EmptyFloorServicer())
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = scoring_pb2_grpc.FraudScoringStub(channel)
            answers = list(stub.ScoreStream(iter([_request(str(i)) for i in range(5)]), timeout=10))
    finally:
        server.stop()

    assert [answer.decision for answer in answers] == [scoring_pb2.DECISION_APPROVE] * 5


@pytest.mark.parametrize(
    "arguments", [["--kind", "onnx"], ["--kind", "empty", "--model", "m.onnx"]]
)
def test_a_model_goes_with_the_onnx_floor_only(arguments: list[str]):
    """--model without --kind onnx, or --kind onnx without it, is a usage error (status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*arguments, "--port", "0"])

    assert exit_info.value.code == 2
