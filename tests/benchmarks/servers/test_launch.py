"""Servers the harness starts itself: ready when SERVING, stopped with exit status 0."""

from __future__ import annotations

import dataclasses
import http.server
import socket
import threading
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


def test_a_port_is_handed_out_once_in_a_process():
    """Servers are given their ports before any binds one: a probe's port, released, may be
    the kernel's answer to the next probe too (CI: a replica of `chaos --scenario rolling`
    got its gRPC port as its metrics port and refused to start). 2,000 probes of one port
    drew repeats every time before the fix."""
    ports = [free_ports(1) for _ in range(2_000)]

    assert len(set(ports)) == len(ports)


def test_fraud_serve_workers_get_one_metrics_port_each():
    """With two workers the spec probes two metrics endpoints, on consecutive ports."""
    spec = fraud_serve_spec("serve", Path("models"), workers=2)

    ports = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in spec.metrics_urls]
    assert ports[1] == ports[0] + 1
    assert spec.argv[spec.argv.index("--workers") + 1] == "2"
    assert spec.target.startswith("127.0.0.1:")


class _WorkerMetrics(http.server.BaseHTTPRequestHandler):
    """A worker's metrics endpoint that reports its champion from the third scrape on."""

    scrapes = 0
    champion_reported = False

    def do_GET(self) -> None:
        cls = type(self)
        cls.scrapes += 1
        body = b"# a worker still starting: no model yet\n"
        if cls.scrapes >= 3:
            cls.champion_reported = True
            body = b'fraud_model_info{alias="champion",version="v1"} 1.0\n'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_server_of_several_workers_is_ready_once_each_worker_serves_its_champion(
    tmp_path: Path,
):
    """The scoring port's SERVING is one worker's answer: the others may still be starting
    (a measurement then scraped a worker whose endpoint was not up, and loaded one worker).
    So every worker's metrics must report a champion first."""
    metrics = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WorkerMetrics)
    threading.Thread(target=metrics.serve_forever, daemon=True).start()
    floor = floor_spec("floor-empty", "empty", None)
    url = f"http://127.0.0.1:{metrics.server_address[1]}/metrics"
    spec = dataclasses.replace(floor, metrics_urls=(url,))
    try:
        with serving(spec, tmp_path):
            assert _WorkerMetrics.champion_reported
    finally:
        metrics.shutdown()
        metrics.server_close()
