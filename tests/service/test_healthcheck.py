"""`python -m service.healthcheck`, run as the image's HEALTHCHECK runs it (a child process)
over real loopback gRPC: 0 against a serving fraud-serve, 1 against a server that answers
anything but SERVING, 2 when nothing answers; TLS and mutual TLS; one line on stderr saying
why whenever it is not 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.healthcheck import parse_options
from tests.conftest import TrainedModel

CHECK_TIMEOUT = 60.0  # seconds for the child process: a python start on a busy machine
Status = health_pb2.HealthCheckResponse
SERVER_NAME = "scoring.internal"  # the only name in the test server's certificate


def run_healthcheck(
    *arguments: str, environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The check as a child process, without the FRAUD_* variables of whoever runs tests."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FRAUD_")}
    return subprocess.run(
        [sys.executable, "-m", "service.healthcheck", *arguments],
        capture_output=True,
        text=True,
        env=env | (environment or {}),
        timeout=CHECK_TIMEOUT,
        check=False,
    )


def assert_fails(result: subprocess.CompletedProcess[str], status: int, reason: str) -> None:
    assert result.returncode == status, result.stderr
    [line] = result.stderr.splitlines()
    assert reason in line, line


class HealthServer:
    """A bare grpc server on a free loopback port with grpc_health's HealthServicer only."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        self.health = health.HealthServicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = "127.0.0.1:0"
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        self.server.start()

    def set(self, status: Any, service: str = "") -> None:
        self.health.set(service, status)

    def stop(self) -> None:
        self.server.stop(grace=None)


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    server = HealthServer()
    yield server
    server.stop()


# --- Against the real server ----------------------------------------------------------------


def test_a_serving_fraud_serve_passes_and_a_stopped_one_does_not(
    trained_model: TrainedModel, start_process: Any
) -> None:
    """0 for the server and its scoring service once the champion is serving, 1 for a
    service it does not have, 2 once it has stopped."""
    process = start_process(
        "--registry", str(trained_model.registry), "--host", "127.0.0.1",
        "--port", "0", "--metrics-port", "0",
    )  # fmt: skip
    port = str(process.wait_for("serving")["port"])

    serving = run_healthcheck("--port", port)
    assert (serving.returncode, serving.stderr) == (0, "")
    scoring = run_healthcheck("--port", port, "--service", "fraud.v1.FraudScoring")
    assert (scoring.returncode, scoring.stderr) == (0, "")
    assert_fails(
        run_healthcheck("--port", port, "--service", "fraud.v1.Nothing"),
        1,
        "service 'fraud.v1.Nothing' is unknown to the server",
    )

    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert_fails(run_healthcheck("--port", port), 2, "no answer: UNAVAILABLE")


# --- What each answer means -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exit_status", "reason"),
    [
        (Status.SERVING, 0, ""),
        (Status.NOT_SERVING, 1, "the server is NOT_SERVING"),
        (Status.UNKNOWN, 1, "the server is UNKNOWN"),
        (Status.SERVICE_UNKNOWN, 1, "the server is SERVICE_UNKNOWN"),
    ],
    ids=["serving", "not-serving", "unknown", "service-unknown"],
)
def test_the_exit_status_follows_the_answer(
    health_server: HealthServer, status: Any, exit_status: int, reason: str
) -> None:
    health_server.set(status)
    result = run_healthcheck("--port", str(health_server.port))
    if exit_status == 0:
        assert (result.returncode, result.stderr) == (0, "")
    else:
        assert_fails(result, exit_status, f"127.0.0.1:{health_server.port}: {reason}")


def test_a_service_is_checked_by_its_own_status(health_server: HealthServer) -> None:
    health_server.set(Status.SERVING)
    health_server.set(Status.NOT_SERVING, "fraud.v1.FraudScoring")
    port = str(health_server.port)
    assert run_healthcheck("--port", port).returncode == 0
    assert_fails(
        run_healthcheck("--port", port, "--service", "fraud.v1.FraudScoring"),
        1,
        "service 'fraud.v1.FraudScoring' is NOT_SERVING",
    )


def test_the_port_defaults_to_the_server_s_setting(
    health_server: HealthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --port: FRAUD_SERVER__PORT, as for the server; without it 50051."""
    health_server.set(Status.NOT_SERVING)
    from_environment = run_healthcheck(environment={"FRAUD_SERVER__PORT": str(health_server.port)})
    assert_fails(from_environment, 1, f"127.0.0.1:{health_server.port}: the server is NOT_SERVING")
    # In process: whether something listens on 50051 here is no business of this test.
    monkeypatch.delenv("FRAUD_SERVER__PORT", raising=False)
    assert parse_options([]).port == 50051


# --- No answer ------------------------------------------------------------------------------


def test_a_closed_port_exits_2() -> None:
    with socket.socket() as bound_not_listening:  # held, so no one else takes the port
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        result = run_healthcheck("--port", str(port))
    assert_fails(result, 2, f"127.0.0.1:{port}: no answer: UNAVAILABLE")


def test_a_server_that_never_answers_exits_2_at_the_timeout() -> None:
    """A port that accepts connections and says nothing: DEADLINE_EXCEEDED after --timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        result = run_healthcheck("--port", str(port), "--timeout", "0.5")
    assert_fails(result, 2, "no answer: DEADLINE_EXCEEDED")


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["--port", "70000"], "argument --port"),
        (["--timeout", "0"], "argument --timeout"),
        (["--tls-cert", "client.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "c.pem", "--tls-key", "c.key"], "need --tls-ca"),
        (["--tls-server-name", SERVER_NAME], "need --tls-ca"),
    ],
    ids=[
        "port-out-of-range",
        "zero-timeout",
        "cert-without-key",
        "cert-without-ca",
        "name-without-ca",
    ],
)
def test_a_bad_option_exits_2(arguments: list[str], reason: str) -> None:
    result = run_healthcheck(*arguments)
    assert result.returncode == 2
    assert reason in result.stderr


def test_an_unreadable_tls_file_exits_2(tmp_path: Path) -> None:
    assert_fails(
        run_healthcheck("--tls-ca", str(tmp_path / "missing.pem")), 2, "cannot read a TLS file"
    )


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for SERVER_NAME only and a client certificate, and an
    unrelated CA."""
    directory = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl(directory, "req", "-x509", *_new_key(ca), "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN={ca}", "-addext", "basicConstraints=critical,CA:TRUE")  # fmt: skip
    (directory / "san.ext").write_text(f"subjectAltName=DNS:{SERVER_NAME}\n")
    for name in ("server", "client"):
        _openssl(directory, "req", *_new_key(name), "-out", f"{name}.csr", "-subj", f"/CN={name}")
        _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem",
                 "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", "san.ext")  # fmt: skip
    return directory


def _new_key(name: str) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key"]  # fmt: skip


def _openssl(directory: Path, *arguments: str) -> None:
    subprocess.run(["openssl", *arguments], cwd=directory, check=True, capture_output=True)


@pytest.fixture(params=[False, True], ids=["tls", "mtls"])
def tls_server(request: pytest.FixtureRequest, pki: Path) -> Iterator[tuple[HealthServer, bool]]:
    """A SERVING health server on TLS, or on mutual TLS (a client certificate from `ca`)."""
    mutual: bool = request.param
    credentials = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes() if mutual else None,
        require_client_auth=mutual,
    )
    server = HealthServer(credentials)
    server.set(Status.SERVING)
    yield server, mutual
    server.stop()


def test_tls_passes_with_the_right_ca_name_and_client_certificate(
    tls_server: tuple[HealthServer, bool], pki: Path
) -> None:
    server, mutual = tls_server
    port = str(server.port)
    trusting = ["--port", port, "--tls-ca", str(pki / "ca.pem"), "--tls-server-name", SERVER_NAME]
    client = ["--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key")]

    passing = run_healthcheck(*trusting, *client)
    assert (passing.returncode, passing.stderr) == (0, "")
    plain = run_healthcheck("--port", port)
    assert_fails(plain, 2, "no answer: UNAVAILABLE")
    untrusted = [
        "--port",
        port,
        "--tls-ca",
        str(pki / "other-ca.pem"),
        "--tls-server-name",
        SERVER_NAME,
    ]
    assert_fails(run_healthcheck(*untrusted, *client), 2, "no answer: UNAVAILABLE")
    wrong_name = run_healthcheck("--port", port, "--tls-ca", str(pki / "ca.pem"), *client)
    assert_fails(wrong_name, 2, "no answer: UNAVAILABLE")
    without_client_certificate = run_healthcheck(*trusting)
    if mutual:
        assert_fails(without_client_certificate, 2, "no answer: UNAVAILABLE")
    else:
        assert without_client_certificate.returncode == 0
