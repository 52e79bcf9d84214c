"""Serve settings: sources and their order, validation messages, secrets kept out of output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from service.config.settings import (
    DEVELOPMENT_CARD_TOKEN_KEY,
    ConfigError,
    ServeSettings,
    load_settings,
)
from service.core.card_tokens import CardTokenizer

SECRET_KEY = "a-production-secret-0123456789"
ADMIN_TOKEN = "an-admin-token-0123456789"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FRAUD_* variable from the developer's shell leaks into a test."""
    for name in os.environ:
        if name.startswith("FRAUD_"):
            monkeypatch.delenv(name)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.toml"
    path.write_text(text, encoding="utf-8")
    return path


def pem_files(tmp_path: Path, *names: str) -> list[Path]:
    paths = [tmp_path / f"{name}.pem" for name in names]
    for path in paths:
        path.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    return paths


def config_error(monkeypatch: pytest.MonkeyPatch, **environment: str) -> str:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    return str(caught.value)


def test_defaults_without_file_or_environment() -> None:
    """With nothing set, the documented defaults apply."""
    settings = load_settings(None)
    assert settings == ServeSettings()
    assert settings.server.port == 50051
    assert settings.server.metrics_port == 9464
    assert settings.server.workers == 1
    assert settings.fallback.policy == "amount_floor"
    assert not settings.tls.enabled


def test_environment_overrides_file_overrides_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value in the environment beats the file, which beats the default."""
    config = write_toml(tmp_path, "[server]\nport = 6000\nworkers = 2\n")
    monkeypatch.setenv("FRAUD_SERVER__PORT", "7000")
    settings = load_settings(config)
    assert settings.server.port == 7000
    assert settings.server.workers == 2
    assert settings.server.metrics_port == 9464


def test_training_variables_are_not_serve_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """FRAUD_TRAIN_* variables in the same environment do not break the server's settings."""
    monkeypatch.setenv("FRAUD_TRAIN_BOOSTER__LEARNING_RATE", "0.1")
    assert load_settings(None) == ServeSettings()


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("FRAUD_SERVER__PORT", "65536", "server.port: "),
        ("FRAUD_SERVER__METRICS_PORT", "-1", "server.metrics_port: "),
        ("FRAUD_SERVER__WORKERS", "0", "server.workers: "),
        ("FRAUD_SERVER__METRICS_PORT", "50051", "server.metrics_port: must differ"),
        ("FRAUD_SERVER__HEALTH_PORT", "9464", "server.health_port: must differ"),
        ("FRAUD_SERVER__HEALTH_PORT", "70000", "server.health_port: "),
        ("FRAUD_FALLBACK__POLICY", "approve", "fallback.policy: "),
        ("FRAUD_LOGGING__SAMPLE_RATE", "1.5", "logging.sample_rate: "),
        ("FRAUD_MODELS__POLL_SECONDS", "-1", "models.poll_seconds: "),
        ("FRAUD_MODELS__SHADOW_BACKLOG", "0", "models.shadow_backlog: "),
        ("FRAUD_DECISION_LOG__RETENTION_DAYS", "0", "decision_log.retention_days: "),
        ("FRAUD_OUTCOME_LOG__MAX_PENDING", "0", "outcome_log.max_pending: "),
        ("FRAUD_SERVER__PROT", "1", "server.prot: Extra inputs are not permitted"),
    ],
)
def test_invalid_value_names_its_dotted_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    """An invalid environment value is reported with its dotted field name and the reason."""
    message = config_error(monkeypatch, **{variable: value})
    assert message.startswith("invalid configuration (FRAUD_* environment): ")
    assert expected in message


def test_port_zero_is_allowed_for_both_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Port 0 (pick a free one) is valid for the scoring and the metrics port at once."""
    monkeypatch.setenv("FRAUD_SERVER__PORT", "0")
    monkeypatch.setenv("FRAUD_SERVER__METRICS_PORT", "0")
    settings = load_settings(None)
    assert (settings.server.port, settings.server.metrics_port) == (0, 0)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    """A misspelt key in the TOML file is an error naming the file and the key."""
    config = write_toml(tmp_path, "[limits]\nmax_amount = 5\n")
    with pytest.raises(
        ConfigError, match=r"serve\.toml or FRAUD_\* environment.*limits\.max_amount"
    ):
        load_settings(config)


def test_unreadable_and_malformed_files_are_config_errors(tmp_path: Path) -> None:
    """A missing file and a file that is not TOML give readable errors naming the file."""
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"serve\.toml: not valid TOML"):
        load_settings(write_toml(tmp_path, "[server\n"))


def test_tls_with_certificate_key_and_client_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Existing certificate, key and client CA files turn on mutual TLS."""
    cert, key, ca = pem_files(tmp_path, "cert", "key", "ca")
    monkeypatch.setenv("FRAUD_TLS__CERT_FILE", str(cert))
    monkeypatch.setenv("FRAUD_TLS__KEY_FILE", str(key))
    monkeypatch.setenv("FRAUD_TLS__CLIENT_CA_FILE", str(ca))
    tls = load_settings(None).tls
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == (cert, key, ca)
    assert tls.enabled
    assert tls.mutual


def test_tls_certificate_without_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certificate alone is an error on tls.key_file."""
    (cert,) = pem_files(tmp_path, "cert")
    message = config_error(monkeypatch, FRAUD_TLS__CERT_FILE=str(cert))
    assert "tls.key_file: tls.cert_file and tls.key_file go together" in message


def test_tls_key_without_certificate_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key alone is an error too."""
    (key,) = pem_files(tmp_path, "key")
    message = config_error(monkeypatch, FRAUD_TLS__KEY_FILE=str(key))
    assert "tls.key_file: tls.cert_file and tls.key_file go together" in message


def test_client_ca_without_server_certificate_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutual TLS needs the server's own certificate and key."""
    (ca,) = pem_files(tmp_path, "ca")
    message = config_error(monkeypatch, FRAUD_TLS__CLIENT_CA_FILE=str(ca))
    assert "tls.client_ca_file: needs tls.cert_file and tls.key_file" in message


def test_tls_file_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TLS path that does not point to a file is reported on its field."""
    (key,) = pem_files(tmp_path, "key")
    message = config_error(
        monkeypatch, FRAUD_TLS__CERT_FILE=str(tmp_path / "absent.pem"), FRAUD_TLS__KEY_FILE=str(key)
    )
    assert "tls.cert_file: Path does not point to a file" in message


def test_development_card_token_key_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default key is reported as the development key; a configured one is not."""
    assert load_settings(None).uses_development_card_token_key
    monkeypatch.setenv("FRAUD_CARD_TOKEN_KEY", SECRET_KEY)
    settings = load_settings(None)
    assert not settings.uses_development_card_token_key
    assert settings.card_token_key.get_secret_value() == SECRET_KEY


def test_secrets_never_appear_in_descriptions(monkeypatch: pytest.MonkeyPatch) -> None:
    """describe(), repr() and str() mask the card token key, and describe() is JSON-ready."""
    monkeypatch.setenv("FRAUD_CARD_TOKEN_KEY", SECRET_KEY)
    settings = load_settings(None)
    described = json.dumps(settings.describe())
    assert json.loads(described)["server"]["port"] == 50051
    for text in (described, repr(settings), str(settings)):
        assert SECRET_KEY not in text
        assert DEVELOPMENT_CARD_TOKEN_KEY not in text


def test_short_card_token_key_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A too-short key is an error whose message does not contain the key."""
    message = config_error(monkeypatch, FRAUD_CARD_TOKEN_KEY="short-secret")
    assert "card_token_key: must be at least 16 characters" in message
    assert "short-secret" not in message


def test_short_key_error_has_no_chained_validation_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ConfigError does not chain pydantic's error, whose text echoes input values."""
    monkeypatch.setenv("FRAUD_CARD_TOKEN_KEY", "short-secret")
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_model_and_admin_defaults() -> None:
    """By default the registry is polled every second, majors are refused, no admin service."""
    settings = load_settings(None)
    assert settings.models.poll_seconds == 1.0
    assert not settings.models.allow_major_library_difference
    assert settings.models.shadow_backlog == 4096
    assert settings.admin.token is None


def test_poll_interval_and_admin_token_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FRAUD_MODELS__POLL_SECONDS and FRAUD_ADMIN__TOKEN are read; the token stays masked."""
    monkeypatch.setenv("FRAUD_MODELS__POLL_SECONDS", "0.25")
    monkeypatch.setenv("FRAUD_ADMIN__TOKEN", ADMIN_TOKEN)
    settings = load_settings(None)
    assert settings.models.poll_seconds == 0.25
    assert settings.admin.token is not None
    assert settings.admin.token.get_secret_value() == ADMIN_TOKEN
    for text in (json.dumps(settings.describe()), repr(settings), str(settings)):
        assert ADMIN_TOKEN not in text


def test_short_admin_token_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A too-short admin token is an error naming the field, not the token."""
    message = config_error(monkeypatch, FRAUD_ADMIN__TOKEN="short-token")
    assert "admin.token: must be at least 16 characters" in message
    assert "short-token" not in message


def test_host_accepts_grpc_brackets_and_builds_the_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`[::]` is read as `::`, and the gRPC address brackets IPv6 hosts only."""
    monkeypatch.setenv("FRAUD_SERVER__HOST", "[::]")
    assert load_settings(None).server.scoring_address == "[::]:50051"
    monkeypatch.setenv("FRAUD_SERVER__HOST", "127.0.0.1")
    monkeypatch.setenv("FRAUD_SERVER__PORT", "0")
    assert load_settings(None).server.scoring_address == "127.0.0.1:0"


def test_log_level_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    """`debug` in the environment means DEBUG; an unknown level is refused."""
    monkeypatch.setenv("FRAUD_LOGGING__LEVEL", "debug")
    assert load_settings(None).logging.level == "DEBUG"
    assert "logging.level: " in config_error(monkeypatch, FRAUD_LOGGING__LEVEL="loud")


def test_record_log_defaults() -> None:
    """Decisions and outcomes are kept in directories of their own for 180 days, outcomes
    within a smaller budget."""
    settings = ServeSettings()
    decisions, outcomes = settings.decision_log, settings.outcome_log
    assert (decisions.directory, outcomes.directory) == (Path("decisions"), Path("outcomes"))
    assert (decisions.max_bytes, outcomes.max_bytes) == (16 * 1024**3, 1024**3)
    assert decisions.retention_days == outcomes.retention_days == 180
    assert decisions.segment_bytes == outcomes.segment_bytes == 64 * 1024**2
    assert decisions.max_pending == outcomes.max_pending == 100_000


def test_one_record_log_setting_keeps_that_log_s_other_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Setting one field of a log, in the environment or the file, leaves the rest of its
    group at the group's defaults, not at those of the shared class."""
    monkeypatch.setenv("FRAUD_OUTCOME_LOG__MAX_PENDING", "5")
    config = write_toml(tmp_path, "[decision_log]\nretention_days = 30\n")
    settings = load_settings(config)
    assert settings.outcome_log == ServeSettings().outcome_log.model_copy(update={"max_pending": 5})
    assert settings.decision_log == ServeSettings().decision_log.model_copy(
        update={"retention_days": 30}
    )


def test_an_empty_record_log_directory_keeps_no_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty directory, in the environment or the file, turns that log off."""
    monkeypatch.setenv("FRAUD_DECISION_LOG__DIRECTORY", "")
    settings = load_settings(write_toml(tmp_path, '[outcome_log]\ndirectory = ""\n'))
    assert settings.decision_log.directory is None
    assert settings.outcome_log.directory is None


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after loading, at the top level or in a group."""
    settings = ServeSettings()
    with pytest.raises(ValidationError):
        settings.registry = Path("elsewhere")  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.server.port = 1  # type: ignore[misc]


def test_every_field_is_documented() -> None:
    """Every field, nested ones included, carries its docstring as a description."""
    documented: list[str] = []
    undocumented: list[str] = []

    def visit(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            if field.description:
                documented.append(prefix + name)
            else:
                undocumented.append(prefix + name)
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                visit(field.annotation, f"{prefix}{name}.")

    visit(ServeSettings, "")
    assert undocumented == []
    assert "tls.client_ca_file" in documented


def test_a_renamed_environment_variable_is_refused_with_its_new_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FRAUD_OUTCOMES_DIRECTORY (before the outcome log had limits) would be ignored, and
    outcomes written where nobody looks: it is refused, naming its replacement."""
    monkeypatch.setenv("FRAUD_OUTCOMES_DIRECTORY", "/data/outcomes")
    with pytest.raises(
        ConfigError, match=r"FRAUD_OUTCOMES_DIRECTORY.*FRAUD_OUTCOME_LOG__DIRECTORY"
    ):
        load_settings()


def test_the_redis_state_is_shared_by_workers_and_its_password_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`state.backend = "redis"` from the environment: several workers may share it, and a
    password in its URL appears in no description."""
    monkeypatch.setenv("FRAUD_STATE__BACKEND", "redis")
    monkeypatch.setenv("FRAUD_STATE__URL", "redis://:hunter2-password@cache:6380/3")
    monkeypatch.setenv("FRAUD_SERVER__WORKERS", "2")
    settings = load_settings(None)
    assert (settings.state.backend, settings.state.timeout_seconds) == ("redis", 0.01)
    assert settings.state.url == "redis://:hunter2-password@cache:6380/3"
    described = json.dumps(settings.describe())
    assert json.loads(described)["state"]["url"] == "redis://:**********@cache:6380/3"
    for text in (described, repr(settings), str(settings)):
        assert "hunter2" not in text


def test_several_workers_on_the_memory_state_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """In memory each worker would count its own share of every card."""
    message = config_error(monkeypatch, FRAUD_STATE__BACKEND="memory", FRAUD_SERVER__WORKERS="2")
    assert '"lmdb" or "redis"' in message


OLD_KEY = "the-key-being-retired-0123456789"
PAN = "4111111111111111"


def test_the_card_tokenizer_names_tokens_by_the_key_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens carry `card_token_key_id` (k1 by default); no rotation unless configured."""
    monkeypatch.setenv("FRAUD_CARD_TOKEN_KEY", SECRET_KEY)
    assert load_settings(None).card_tokenizer().token(PAN).startswith("k1:")
    monkeypatch.setenv("FRAUD_CARD_TOKEN_KEY_ID", "k2")
    tokenizer = load_settings(None).card_tokenizer()
    assert tokenizer.token(PAN) == CardTokenizer(SECRET_KEY.encode(), "k2").token(PAN)
    assert not tokenizer.rotating


def test_a_previous_key_gives_the_previous_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """During a rotation the tokenizer knows the retired key's tokens; the key stays secret
    in every description."""
    monkeypatch.setenv("FRAUD_CARD_TOKEN_KEY", SECRET_KEY)
    monkeypatch.setenv("FRAUD_CARD_TOKEN_KEY_ID", "k2")
    monkeypatch.setenv("FRAUD_PREVIOUS_CARD_TOKEN_KEY", OLD_KEY)
    monkeypatch.setenv("FRAUD_PREVIOUS_CARD_TOKEN_KEY_ID", "k1")
    settings = load_settings(None)
    tokenizer = settings.card_tokenizer()
    assert tokenizer.rotating
    assert tokenizer.previous_token(PAN) == CardTokenizer(OLD_KEY.encode(), "k1").token(PAN)
    for text in (json.dumps(settings.describe()), repr(settings), str(settings)):
        assert OLD_KEY not in text


def test_the_upgrade_from_tokens_without_key_ids_needs_only_the_legacy_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A previous key id alone means the current key under that id: `tok`, the tokens of
    releases before key ids."""
    monkeypatch.setenv("FRAUD_CARD_TOKEN_KEY", SECRET_KEY)
    monkeypatch.setenv("FRAUD_PREVIOUS_CARD_TOKEN_KEY_ID", "tok")
    previous = load_settings(None).card_tokenizer().previous_token(PAN)
    assert previous == CardTokenizer(SECRET_KEY.encode(), "tok").token(PAN)
    assert previous is not None
    assert previous.startswith("tok_")


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"FRAUD_CARD_TOKEN_KEY_ID": "K1"}, "card_token_key_id: String should match pattern"),
        ({"FRAUD_CARD_TOKEN_KEY_ID": "k1:"}, "card_token_key_id: String should match pattern"),
        ({"FRAUD_PREVIOUS_CARD_TOKEN_KEY": OLD_KEY}, "needs previous_card_token_key_id"),
        ({"FRAUD_PREVIOUS_CARD_TOKEN_KEY_ID": "k1"}, "must differ from card_token_key_id"),
        (
            {
                "FRAUD_PREVIOUS_CARD_TOKEN_KEY": "short-secret",
                "FRAUD_PREVIOUS_CARD_TOKEN_KEY_ID": "k0",
            },
            "previous_card_token_key: must be at least 16 characters",
        ),
    ],
)
def test_bad_token_key_settings_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], expected: str
) -> None:
    """Malformed ids, a previous key without its id or with the current id, and a short
    previous key are refused, without echoing a key."""
    message = config_error(monkeypatch, **environment)
    assert expected in message
    assert "short-secret" not in message
    assert OLD_KEY not in message
