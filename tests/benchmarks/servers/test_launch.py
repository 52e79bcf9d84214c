"""Servers the harness starts itself: ready when SERVING, stopped with exit status 0."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import psutil
import pytest

from benchmarks.servers.launch import ServerError, floor_spec, fraud_serve_spec, free_ports, serving
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc


def test_a_started_server_answers_then_stops_gracefully(tmp_path: Path):
    """Once yielded the server answers; on leaving it is stopped (exit 0) and gone."""
    with serving(floor_spec("floor-empty", "empty", None), tmp_path) as server:
        with grpc.insecure_channel(server.target) as channel:
            answer = scoring_pb2_grpc.FraudScoringStub(channel).Score(
                scoring_pb2.ScoreRequest(), timeout=10
            )
        [pid] = server.probe.pids

    assert answer.decision == scoring_pb2.DECISION_APPROVE
    assert pid is not None
    assert not psutil.pid_exists(pid)
    assert (tmp_path / "floor-empty.log").exists()


def test_a_server_that_cannot_start_is_reported(tmp_path: Path):
    """A server process that exits before SERVING raises ServerError naming it."""
    spec = floor_spec("floor-onnx", "onnx", tmp_path / "missing" / "model.onnx")

    with (
        pytest.raises(ServerError, match="floor-onnx exited with status 1"),
        serving(spec, tmp_path),
    ):
        pass


def test_free_ports_are_consecutive_and_free():
    """Three consecutive ports from the first returned can all be bound."""
    first = free_ports(3)

    for port in range(first, first + 3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


def test_fraud_serve_workers_get_one_metrics_port_each():
    """With two workers the spec probes two metrics endpoints, on consecutive ports."""
    spec = fraud_serve_spec("serve", Path("models"), workers=2)

    ports = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in spec.metrics_urls]
    assert ports[1] == ports[0] + 1
    assert spec.argv[spec.argv.index("--workers") + 1] == "2"
    assert spec.target.startswith("127.0.0.1:")
