"""The `auth` and `connections` settings: callers from a file and from the environment,
what is refused (with the setting named, never a token), and what production requires."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from service.config.settings import ConfigError, ServeSettings, load_settings

TOKEN = "a-caller-token-0123456789abcdef"
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()
OTHER_DIGEST = hashlib.sha256(b"another-token").hexdigest()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FRAUD_* variable from the developer's shell leaks into a test."""
    for name in os.environ:
        if name.startswith("FRAUD_"):
            monkeypatch.delenv(name)


def _callers(monkeypatch: pytest.MonkeyPatch, callers: list[dict[str, object]]) -> None:
    monkeypatch.setenv("FRAUD_AUTH__CALLERS", json.dumps(callers))


def _error(monkeypatch: pytest.MonkeyPatch, callers: list[dict[str, object]]) -> str:
    _callers(monkeypatch, callers)
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    return str(caught.value)


def test_by_default_no_caller_is_configured_and_production_refuses_that() -> None:
    settings = ServeSettings()
    assert settings.auth.callers == []
    assert settings.auth.open
    assert settings.auth.reflection
    assert any(problem.startswith("auth.callers: ") for problem in settings.production_problems())


def test_callers_come_from_a_file_with_their_tokens_digests_and_sans(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(
        f"""
[tls]
cert_file = "{config}"
key_file = "{config}"
client_ca_file = "{config}"

[[auth.callers]]
name = "pos-gateway"
roles = ["score", "report"]
token_sha256 = ["{DIGEST.upper()}", "{OTHER_DIGEST}"]
certificate_sans = ["pos-gateway.payments.internal", "spiffe://payments/pos"]

[[auth.callers]]
name = "ops"
roles = ["admin", "read-model"]
token_sha256 = ["{OTHER_DIGEST[::-1]}"]
"""
    )
    settings = load_settings(config)
    gateway, ops = settings.auth.callers
    assert (gateway.name, gateway.roles) == ("pos-gateway", ["score", "report"])
    assert gateway.token_sha256 == [DIGEST, OTHER_DIGEST]  # normalised to lower case
    assert gateway.certificate_sans == ["pos-gateway.payments.internal", "spiffe://payments/pos"]
    assert ops.roles == ["admin", "read-model"]
    assert not settings.auth.open
    assert not any(problem.startswith("auth.") for problem in settings.production_problems())


def test_callers_come_from_the_environment_as_json_and_show_shortened_digests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The startup log's description shows a digest's first 8 digits only."""
    _callers(monkeypatch, [{"name": "pos", "roles": ["score"], "token_sha256": [DIGEST]}])
    settings = load_settings(None)
    assert settings.auth.callers[0].token_sha256 == [DIGEST]
    described = json.dumps(settings.describe())
    assert DIGEST[:8] + "..." in described
    assert DIGEST not in described


@pytest.mark.parametrize(
    ("callers", "message"),
    [
        (
            [{"name": "pos", "roles": ["score"], "token_sha256": [TOKEN]}],
            "auth.callers.0.token_sha256: each must be a SHA-256 digest in hex",
        ),
        (
            [{"name": "pos", "roles": ["score"]}],
            "a caller needs token_sha256 or certificate_sans",
        ),
        ([{"name": "pos", "roles": [], "token_sha256": [DIGEST]}], "auth.callers.0.roles"),
        ([{"name": "pos", "roles": ["write"], "token_sha256": [DIGEST]}], "auth.callers.0.roles"),
        ([{"name": "has space", "roles": ["score"], "token_sha256": [DIGEST]}], "name"),
        (
            [
                {"name": "pos", "roles": ["score"], "token_sha256": [DIGEST]},
                {"name": "pos", "roles": ["report"], "token_sha256": [OTHER_DIGEST]},
            ],
            "a name may identify one caller only: 'pos' is given twice",
        ),
        (
            [
                {"name": "pos", "roles": ["score"], "token_sha256": [DIGEST]},
                {"name": "ops", "roles": ["admin"], "token_sha256": [DIGEST]},
            ],
            f"a token digest may identify one caller only: '{DIGEST[:8]}' is given twice",
        ),
    ],
    ids=[
        "token-not-digest",
        "no-credential",
        "no-role",
        "unknown-role",
        "bad-name",
        "same-name",
        "same-digest",
    ],
)
def test_bad_callers_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, callers: list[dict[str, object]], message: str
) -> None:
    """The error names the setting and never repeats a token (one pasted where its digest
    goes included) or a whole digest."""
    text = _error(monkeypatch, callers)
    assert message in text
    assert TOKEN not in text
    assert DIGEST not in text


def test_certificate_sans_need_mutual_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _error(
        monkeypatch, [{"name": "pos", "roles": ["score"], "certificate_sans": ["pos.internal"]}]
    )
    assert "certificate_sans identify callers by their client certificates" in text
    assert "tls.client_ca_file" in text


def test_connection_limits_default_and_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = ServeSettings().connections
    assert (defaults.max_open_streams, defaults.max_calls_per_connection) == (1024, 512)
    assert (defaults.stream_idle_seconds, defaults.stream_max_seconds) == (60.0, 300.0)
    assert (defaults.max_idle_seconds, defaults.request_read_seconds) == (120.0, 1.0)
    monkeypatch.setenv("FRAUD_CONNECTIONS__MAX_OPEN_STREAMS", "4096")
    monkeypatch.setenv("FRAUD_AUTH__REFLECTION", "false")
    settings = load_settings(None)
    assert settings.connections.max_open_streams == 4096
    assert not settings.auth.reflection
