"""`python -m service.healthcheck`: asks a scoring server over the standard `grpc.health.v1`
protocol whether it is serving. The image's HEALTHCHECK runs it, and so can a Kubernetes
exec probe on clusters older than native gRPC probes (1.24).

Exit status: 0 when the server answers SERVING; 1 when it answers anything else
(NOT_SERVING while the champion loads or from a SIGTERM on, UNKNOWN, or a service name it
does not know); 2 when there is no answer (nothing listening, TLS refused, the timeout) or an
option is wrong. Anything but 0 prints one line to stderr saying why (after the usage, for a
wrong option).

The port defaults to FRAUD_SERVER__PORT, then 50051, as the server's does. With
`--tls-ca` the call uses TLS, trusting that CA; `--tls-cert` and `--tls-key` add the client
certificate a server with `tls.client_ca_file` (mutual TLS) demands.

Imports only grpc and the health stubs, so that a probe every few seconds stays cheap.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

if __name__ == "__main__":
    # On a failed TLS handshake grpc writes lines of its own to stderr, beside the one that
    # already gives the reason. Read once, when grpc loads; GRPC_VERBOSITY=debug still
    # shows them.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc
from grpc_health.v1 import health_pb2

SERVING = 0
NOT_SERVING = 1
NO_ANSWER = 2

# What health_pb2_grpc.HealthStub calls, made here because its type stubs declare no methods.
CHECK_METHOD = "/grpc.health.v1.Health/Check"
DEFAULT_PORT = 50051
DEFAULT_TIMEOUT_SECONDS = 3.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one health check; the exit status as the module docstring says."""
    options = parse_options(argv)
    try:
        credentials = _credentials(options)
    except OSError as error:
        return _report(NO_ANSWER, f"cannot read a TLS file: {error}")
    target = _target(options.host, options.port)
    channel_options = []
    if options.tls_server_name:
        channel_options.append(("grpc.ssl_target_name_override", options.tls_server_name))
    if credentials is None:
        channel = grpc.insecure_channel(target, options=channel_options)
    else:
        channel = grpc.secure_channel(target, credentials, options=channel_options)
    with channel:
        exit_status, reason = check(channel, options.service, options.timeout)
    if exit_status != SERVING:
        _report(exit_status, f"{target}: {reason}")
    return exit_status


def check(channel: grpc.Channel, service: str, timeout: float) -> tuple[int, str]:
    """One `Health/Check` call: the exit status and, unless SERVING, why."""
    what = f"service {service!r}" if service else "the server"
    call_check = channel.unary_unary(
        CHECK_METHOD,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    try:
        response = call_check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as error:
        call = cast(grpc.Call, error)
        if call.code() is grpc.StatusCode.NOT_FOUND:
            # The server answered: it has no such service, which Watch would call
            # SERVICE_UNKNOWN.
            return NOT_SERVING, f"{what} is unknown to the server"
        return NO_ANSWER, f"no answer: {call.code().name}: {call.details() or ''}"
    if response.status == health_pb2.HealthCheckResponse.SERVING:
        return SERVING, ""
    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return NOT_SERVING, f"{what} is {status_name}"


def parse_options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line's options; exits 2 with the usage on a wrong one."""
    parser = _parser()
    options = parser.parse_args(argv)
    _check_tls_options(parser, options)
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.healthcheck",
        description="Exit 0 if the scoring server's grpc.health.v1 Check answers SERVING, "
        "1 if it answers anything else, 2 if there is no answer.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument(
        "--port",
        type=port_number,
        default=os.environ.get("FRAUD_SERVER__PORT", str(DEFAULT_PORT)),
        help=f"default: FRAUD_SERVER__PORT, else {DEFAULT_PORT}",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="deadline of the call, connection included (default: %(default)s)",
    )
    parser.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help="a service's health, e.g. fraud.v1.FraudScoring (default: the whole server)",
    )
    parser.add_argument("--tls-ca", type=Path, metavar="FILE", help="PEM CA: use TLS, trust it")
    parser.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM client certificate")
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM key of --tls-cert")
    parser.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name the server's certificate is checked for, when it is not the host's",
    )
    return parser


def _check_tls_options(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    """Exits 2 with argparse's usage line on an incomplete TLS set-up."""
    if (options.tls_cert is None) != (options.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if options.tls_ca is None and (options.tls_cert or options.tls_server_name):
        parser.error("--tls-cert, --tls-key and --tls-server-name need --tls-ca")


def _credentials(options: argparse.Namespace) -> grpc.ChannelCredentials | None:
    if options.tls_ca is None:
        return None
    ca: Path = options.tls_ca
    client_cert: Path | None = options.tls_cert
    client_key: Path | None = options.tls_key
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client_key.read_bytes() if client_key else None,
        certificate_chain=client_cert.read_bytes() if client_cert else None,
    )


def _target(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"{host}:{port}"


def port_number(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(text)
    return port


def positive_seconds(text: str) -> float:
    seconds = float(text)
    if not seconds > 0:
        raise ValueError(text)
    return seconds


def _report(exit_status: int, reason: str) -> int:
    print("healthcheck:", *reason.split(), file=sys.stderr)  # one line, whatever grpc said
    return exit_status


if __name__ == "__main__":
    sys.exit(main())
