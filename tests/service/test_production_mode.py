"""`fraud-serve --production` as an operator starts it: each setting only fit for development
is refused at start (exit 2, naming the setting), and a safe configuration serves a signed
model over TLS."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.grpc_api.client import bearer_metadata
from service.model.signatures import SIGNATURE_FILE
from tests.conftest import TrainedModel
from tests.server_process import ServerProcess
from tests.tls_certificates import SERVER_NAME, ServerCertificate, issue_server_certificate
from training.registry.publishing import sign
from training.registry.signing import SigningKey, generate_key_pair

SECRET_CARD_TOKEN_KEY = "a-card-token-key-nobody-else-knows"
READER_TOKEN = "the-model-reader-token-0123456789abcdef"


@pytest.fixture
def certificate(tmp_path: Path) -> ServerCertificate:
    return issue_server_certificate(tmp_path / "tls")


@pytest.fixture
def signing_key(tmp_path: Path) -> SigningKey:
    return generate_key_pair(tmp_path / "keys", "release")[0]


def _safe(certificate: ServerCertificate, key: SigningKey) -> dict[str, str]:
    """Settings production mode accepts."""
    return {
        "FRAUD_TLS__CERT_FILE": str(certificate.cert_file),
        "FRAUD_TLS__KEY_FILE": str(certificate.key_file),
        "FRAUD_CARD_TOKEN_KEY": SECRET_CARD_TOKEN_KEY,
        "FRAUD_MODELS__TRUSTED_KEYS": json.dumps([key.public_text]),
        "FRAUD_ADMIN__TOKEN": "an-admin-token-long-enough-to-pass",
        "FRAUD_AUTH__CALLERS": json.dumps(
            [
                {
                    "name": "model-reader",
                    "roles": ["read-model"],
                    "token_sha256": [hashlib.sha256(READER_TOKEN.encode()).hexdigest()],
                }
            ]
        ),
    }


def _without(settings: dict[str, str], *names: str) -> dict[str, str]:
    return {name: value for name, value in settings.items() if name not in names}


# Each unsafe setting: how to make the safe settings unsafe in that one way, and what the
# refusal must name.
UNSAFE: dict[str, tuple[Callable[[dict[str, str]], dict[str, str]], str]] = {
    "plaintext": (
        lambda safe: _without(
            safe, "FRAUD_TLS__CERT_FILE", "FRAUD_TLS__KEY_FILE", "FRAUD_ADMIN__TOKEN"
        ),
        "tls: the scoring port is plaintext",
    ),
    "admin_token_over_plaintext": (
        lambda safe: _without(safe, "FRAUD_TLS__CERT_FILE", "FRAUD_TLS__KEY_FILE"),
        "admin.token: an admin token sent over plaintext",
    ),
    "development_card_token_key": (
        lambda safe: _without(safe, "FRAUD_CARD_TOKEN_KEY"),
        "card_token_key: the public development key",
    ),
    "no_trusted_signing_key": (
        lambda safe: _without(safe, "FRAUD_MODELS__TRUSTED_KEYS"),
        "models.trusted_keys: no key to check model signatures with",
    ),
    "no_callers": (
        lambda safe: _without(safe, "FRAUD_AUTH__CALLERS"),
        "auth.callers: no caller roles configured",
    ),
}


@pytest.mark.parametrize("unsafe", sorted(UNSAFE))
def test_production_mode_refuses_each_unsafe_setting(
    unsafe: str,
    start_process: Callable[..., ServerProcess],
    trained_model: TrainedModel,
    certificate: ServerCertificate,
    signing_key: SigningKey,
) -> None:
    """Exit 2 before anything is opened, with the setting to fix; the other settings are
    safe, so the refusal is this one's."""
    make_unsafe, message = UNSAFE[unsafe]
    process = start_process(
        "--production", "--registry", str(trained_model.registry), "--port", "0",
        "--metrics-port", "0",
        environment=make_unsafe(_safe(certificate, signing_key)),
    )  # fmt: skip
    assert process.wait() == 2
    output = process.text()
    assert "production mode refuses to start" in output
    named = {text for _make, text in UNSAFE.values() if text in output}
    # An admin token over plaintext is plaintext too; otherwise this setting alone is named.
    also = {UNSAFE["plaintext"][1]} if unsafe == "admin_token_over_plaintext" else set()
    assert named == {message} | also


def test_the_mode_can_be_set_in_the_environment(
    start_process: Callable[..., ServerProcess],
    trained_model: TrainedModel,
    certificate: ServerCertificate,
    signing_key: SigningKey,
) -> None:
    unsafe = _without(_safe(certificate, signing_key), "FRAUD_MODELS__TRUSTED_KEYS")
    process = start_process(
        "--registry", str(trained_model.registry), "--port", "0", "--metrics-port", "0",
        environment=unsafe | {"FRAUD_MODE": "production"},
    )  # fmt: skip
    assert process.wait() == 2
    assert "models.trusted_keys" in process.text()


def test_a_trusted_key_that_does_not_parse_is_a_configuration_error(
    start_process: Callable[..., ServerProcess], trained_model: TrainedModel
) -> None:
    process = start_process(
        "--registry", str(trained_model.registry), "--port", "0", "--metrics-port", "0",
        environment={"FRAUD_MODELS__TRUSTED_KEYS": '["bm90IGEga2V5"]'},
    )  # fmt: skip
    assert process.wait() == 2
    assert "models.trusted_keys: an Ed25519 public key is 32 bytes" in process.text()


def test_production_mode_serves_a_signed_model_over_tls(
    start_process: Callable[..., ServerProcess],
    trained_model: TrainedModel,
    certificate: ServerCertificate,
    signing_key: SigningKey,
    tmp_path: Path,
) -> None:
    """With every setting safe, the server starts, loads the champion signed by the trusted
    key (its log names the key) and answers over TLS the caller holding the role, and only
    it; it never warns about signatures or open methods. Its plaintext health port (for
    Kubernetes' probes, which cannot use TLS) answers health and nothing else."""
    registry = Path(shutil.copytree(trained_model.registry, tmp_path / "models"))
    sign(registry, trained_model.version, signing_key)
    assert (registry / "versions" / trained_model.version / SIGNATURE_FILE).is_file()
    process = start_process(
        "--production", "--registry", str(registry), "--host", "127.0.0.1", "--port", "0",
        "--metrics-port", "0", "--health-port", "0",
        environment=_safe(certificate, signing_key),
    )  # fmt: skip
    health_port = process.wait_for("listening")["health_port"]
    swapped = process.wait_for("model_swapped")
    assert swapped["signed_by"] == signing_key.key_id
    serving = process.wait_for("serving")
    credentials = grpc.ssl_channel_credentials(certificate.ca_file.read_bytes())
    with grpc.secure_channel(
        f"127.0.0.1:{serving['port']}",
        credentials,
        options=[("grpc.ssl_target_name_override", SERVER_NAME)],
    ) as channel:
        health_stub: Any = health_pb2_grpc.HealthStub(channel)  # its type stubs lack Check
        health = health_stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        stub = scoring_pb2_grpc.FraudScoringStub(channel)
        info = stub.GetModelInfo(
            scoring_pb2.GetModelInfoRequest(), timeout=10, metadata=bearer_metadata(READER_TOKEN)
        )
        with pytest.raises(grpc.RpcError) as anonymous:
            stub.GetModelInfo(scoring_pb2.GetModelInfoRequest(), timeout=10)
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as plaintext:
        probe: Any = health_pb2_grpc.HealthStub(plaintext)
        probed = {
            service: probe.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            for service in ("", "fraud.v1.FraudScoring", "liveness")
        }
        with pytest.raises(grpc.RpcError) as scoring_on_health_port:
            scoring_pb2_grpc.FraudScoringStub(plaintext).GetModelInfo(
                scoring_pb2.GetModelInfoRequest(),
                timeout=10,
                metadata=bearer_metadata(READER_TOKEN),
            )
    assert {service: answer.status for service, answer in probed.items()} == dict.fromkeys(
        probed, health_pb2.HealthCheckResponse.SERVING
    )
    not_there: Any = scoring_on_health_port.value
    assert not_there.code() == grpc.StatusCode.UNIMPLEMENTED
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert info.version == trained_model.version
    refused: Any = anonymous.value  # an RpcError that is also a grpc.Call
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "model_signature_not_checked" not in process.events()
    assert "callers_not_configured" not in process.events()
