"""What identifying a caller costs the server per call, on a real mutual-TLS call's context.

    python -m benchmarks.measurements.auth_cost [--callers 8] [--repeats 20000]

Serves one in-process grpc.aio server over loopback mutual TLS (a throwaway authority made
with `cryptography`) whose handler, inside one real call, repeats the admission
interceptor's identification `--repeats` times and reports the mean, for each way a call
can be identified: by bearer token (the metadata scan, one SHA-256, a constant-time
comparison with each of the `--callers` callers' digests), by client certificate (the
call's peer identity read from gRPC, a dict lookup), and open mode (none); each then the
role check and the caller's name set for the records. The rest of a call's cost, with and
without callers, is measured end to end by `fraud-bench run --mode closed --server-pid`
(`--token` for a caller's token).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.core.callers import CURRENT_CALLER
from service.grpc_api.auth import Caller, CallerDirectory, bearer_token
from service.grpc_api.client import bearer_metadata

_SERVICE = "fraud.bench.AuthCost"
_CLIENT_SAN = "pos-gateway.callers.bench"
_TOKEN = "the-bench-caller-token-0123456789abcdef"


def measure(callers: int, repeats: int) -> dict[str, float]:
    """Mean µs per identification, by how the call is identified."""
    with tempfile.TemporaryDirectory() as directory:
        return asyncio.run(_measure(Path(directory), callers, repeats))


def _directory(callers: int) -> CallerDirectory:
    """`callers` callers, the last one holding the bench's token and certificate SAN."""
    entries = []
    for number in range(callers):
        last = number == callers - 1
        token = _TOKEN if last else f"another-caller-token-{number}"
        sans = [_CLIENT_SAN if last else f"caller-{number}.callers.bench"]
        caller = Caller(f"caller-{number}", frozenset({"score", "report"}))
        entries.append((caller, [hashlib.sha256(token.encode()).digest()], sans))
    return CallerDirectory(entries)


async def _measure(directory: Path, callers: int, repeats: int) -> dict[str, float]:
    known = _directory(callers)
    figures: dict[str, float] = {}

    async def probe(_request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        metadata = context.invocation_metadata()
        figures["token"] = _timed(repeats, lambda: known.by_token(bearer_token(metadata) or ""))
        figures["certificate"] = _timed(
            repeats,
            lambda: known.by_certificate(context.peer_identity_key(), context.peer_identities()),
        )
        figures["open"] = _timed(repeats, lambda: None)
        return b""

    server = grpc.aio.server()
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(probe)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE, {"Probe": handler}),)
    )
    ca, server_pair, client_pair = _certificates()
    credentials = grpc.ssl_server_credentials(
        [server_pair], root_certificates=ca, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        client = grpc.ssl_channel_credentials(ca, *client_pair)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", client) as channel:
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                f"/{_SERVICE}/Probe"
            )
            await call(b"", metadata=bearer_metadata(_TOKEN), timeout=600)
    finally:
        await server.stop(0)
    return figures


def _timed(repeats: int, identify: Any) -> float:
    """Mean µs of `identify()`, then the role check and the caller's name set."""
    started = time.perf_counter()
    for _ in range(repeats):
        caller = identify()
        if caller is not None and "score" in caller.roles:
            CURRENT_CALLER.set(caller.name)
    return round((time.perf_counter() - started) / repeats * 1e6, 3)


def _certificates() -> tuple[bytes, tuple[bytes, bytes], tuple[bytes, bytes]]:
    """An authority's certificate, and (key, chain) pairs for the server and the client."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auth-cost bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(names: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key_pem, certificate.public_bytes(serialization.Encoding.PEM)

    server = issue([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = issue([x509.DNSName(_CLIENT_SAN)])
    return ca.public_bytes(serialization.Encoding.PEM), server, client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=8, help="callers configured")
    parser.add_argument("--repeats", type=int, default=20_000)
    args = parser.parse_args()
    if args.callers < 1 or args.repeats < 1:
        parser.error("--callers and --repeats must be at least 1")
    figures = measure(args.callers, args.repeats)
    print(json.dumps({"callers": args.callers, "us_per_call": figures}))


if __name__ == "__main__":
    main()
