"""Configuration of `fraud-serve`: one frozen settings model, every knob defaulted and documented.

Values come from, highest first: the environment (`FRAUD_` prefix, `__` between nested names,
e.g. `FRAUD_SERVER__PORT=50052`), the TOML file given with `--config`, then the defaults below.
Each field's docstring is its documentation. `ServeSettings.describe()` gives the effective
values with secrets masked, fit for a log line. The feature engine's settings are not here:
they come from the manifest of the model being served.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.config.layered import ConfigError, load_layered_settings
from service.core.card_tokens import DEFAULT_KEY_ID, KEY_ID_PATTERN, CardTokenizer
from service.core.domain import FallbackMode

__all__ = ["ConfigError", "ServeSettings", "load_settings"]

# Public on purpose: tokens keyed with it are not secret, so the server warns while it is used.
DEVELOPMENT_CARD_TOKEN_KEY = "fraud-scoring-development-key-do-not-use-in-production"

# A shorter HMAC key would be easy to guess, and with it card numbers from their tokens.
MIN_CARD_TOKEN_KEY_LENGTH = 16
MIN_ADMIN_TOKEN_LENGTH = 16
_MASK = "**********"  # as pydantic shows a SecretStr
MIB = 1 << 20
GIB = 1 << 30


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class ServerSettings(_Group):
    """Where and how the gRPC server listens."""

    host: str = "::"
    """Interface for the scoring and metrics ports. `::` listens on every IPv6 and (dual-stack,
    as on Linux) IPv4 interface, which a container needs; `127.0.0.1` accepts local callers only.
    `[::]` (gRPC's bracketed form) is accepted too."""

    port: int = Field(default=50051, ge=0, le=65535)
    """Scoring (gRPC) port; 50051 is gRPC's customary port. 0 picks a free one (tests)."""

    metrics_port: int = Field(default=9464, ge=0, le=65535)
    """Prometheus `/metrics` HTTP port, kept apart from scoring traffic; 9464 is the port
    Prometheus exporters conventionally use. 0 picks a free one (tests)."""

    workers: int = Field(default=1, ge=1)
    """Server processes sharing the scoring port, and the feature state's store (LMDB or
    Redis): each scores what one process would. Beyond about 2,000 answers per second one process is
    busy; add workers, one per core."""

    max_in_flight: int = Field(default=256, ge=1)
    """Scoring calls in progress above which new ones get RESOURCE_EXHAUSTED at once instead
    of queueing without bound. 256 calls in progress already hold more server CPU than the
    budget allows: calls queued behind them would miss it anyway. Health checks are not
    counted."""

    max_pending_calls: int = Field(default=1024, ge=1)
    """Calls of one method arrived but not yet picked up by the server's event loop
    (waiting in gRPC's core: under a CPU-bound overload the queue forms there, where
    `max_in_flight` cannot see it) above which gRPC's core refuses new ones at once, without
    any Python work: the client sees CANCELLED, not RESOURCE_EXHAUSTED (grpcio's server
    resets the call's stream), counted in `fraud_rpc_refused_unread_total` only. Each
    scoring and admin method has a queue of its own, health checks another, so a flood of
    Score calls does not refuse them. 1024 lets a burst of new calls as large as the stream
    budget (`connections.max_open_streams`) wait to be picked up: with 32, 840 of 1,000
    ScoreStream calls opened at once were refused. Lower it to shed a CPU-bound overload
    within milliseconds instead of answering late (32 is about 16 ms of queue at 0.5 ms a
    call), at the price of refusing bursts larger than it (benchmarks/RESULTS.md,
    "Overload")."""

    grace_seconds: float = Field(default=10.0, ge=0)
    """Time in-flight calls get to finish after SIGTERM; stays well inside Kubernetes's
    default 30 s termination grace period."""

    full_gc: bool = False
    """Let Python run full (generation 2) garbage collections. Off by default: each walks
    every live object of the feature state while holding up every request (measured in
    benchmarks/RESULTS.md); young garbage is still collected (see
    `service.observability.gc_policy`). Turn on if resident memory grows without bound."""

    max_connection_age_seconds: float = Field(default=300.0, gt=0)
    """Age at which the server asks a client to reconnect (HTTP/2 GOAWAY; calls in progress
    get `grace_seconds` to finish, and a client with the recommended service config retries
    any refused). gRPC keeps one connection per server for good, so without it a client
    never re-resolves the service's name: replicas added by a scale-up would get no traffic
    from clients already connected. Five minutes spreads them within five minutes."""

    keepalive_seconds: float = Field(default=60.0, gt=0)
    """Quiet time after which the server pings a client, to find connections a network
    dropped silently (a client gone with a NAT or a load balancer's idle timeout)."""

    min_client_ping_seconds: float = Field(default=10.0, gt=0)
    """Shortest interval at which clients may ping (their own keepalive); pings more often
    than that make the server close the connection. The recommended client pings every
    30 s."""

    max_message_bytes: int = Field(default=64 * 1024, ge=4096)
    """Largest gRPC message received or sent. A transaction takes a few hundred bytes and
    the model info a few KiB, so 64 KiB rejects abuse without limiting real calls."""

    health_port: int | None = Field(default=None, ge=0, le=65535)
    """A second, plaintext port serving `grpc.health.v1` and nothing else, for probes that
    cannot use TLS or a client certificate: Kubernetes' native gRPC probes
    (deploy/kubernetes uses 50052). Off (None) by default; the scoring port answers health
    checks too. Health says nothing about callers or cards, so production mode allows it in
    plaintext. 0 picks a free one (tests)."""

    @field_validator("host")
    @classmethod
    def _strip_brackets(cls, host: str) -> str:
        return host.removeprefix("[").removesuffix("]")

    @field_validator("metrics_port")
    @classmethod
    def _distinct_ports(cls, metrics_port: int, info: ValidationInfo) -> int:
        if metrics_port != 0 and metrics_port == info.data.get("port"):
            raise PydanticCustomError("port_clash", "must differ from server.port")
        return metrics_port

    @field_validator("health_port")
    @classmethod
    def _health_port_apart(cls, health_port: int | None, info: ValidationInfo) -> int | None:
        if health_port and health_port in (info.data.get("port"), info.data.get("metrics_port")):
            raise PydanticCustomError(
                "port_clash", "must differ from server.port and server.metrics_port"
            )
        return health_port

    @property
    def scoring_address(self) -> str:
        """`host:port` as gRPC expects it, with an IPv6 host in brackets."""
        return self.address_of(self.port)

    def address_of(self, port: int) -> str:
        """`host:port` for `port` on the configured interface, an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"


class BudgetSettings(_Group):
    """How long the server may work on one request."""

    server_budget_ms: float = Field(default=20.0, gt=0, le=60_000)
    """Time from a request's arrival within which it is answered, whatever the client's
    deadline (the earlier of the two applies). A request whose budget is gone before scoring
    starts gets the fallback decision. Scoring takes a small part of it, so 20 ms trips only
    under overload or long pauses, and still answers within a payment flow's patience."""


class FallbackSettings(_Group):
    """The rule-based decision given when the model cannot answer in time."""

    policy: FallbackMode = "amount_floor"
    """`amount_floor`: approve below `approve_below_minor`, review from it up; `decline`:
    decline everything; `disabled`: no fallback, callers get UNAVAILABLE. The default
    follows the issuer's view that a late answer costs more than a conservative one."""

    approve_below_minor: int = Field(default=5000, ge=0)
    """Floor of the `amount_floor` policy, in the transaction currency's minor units (5000 is
    50.00 USD or EUR). Compared as is, with no currency conversion: 5000 JPY is far less."""


class LimitsSettings(_Group):
    """Bounds on request values; anything outside is INVALID_ARGUMENT (but an event time
    too far ahead, which gets the fallback decision)."""

    max_string_length: int = Field(default=128, ge=1, le=4096)
    """Longest accepted id, currency or country string, in characters. Real ids are short;
    the bound keeps huge strings out of the feature state's keys."""

    max_amount_minor: int = Field(default=10**11, ge=1)
    """Largest amount in minor units (10**11 is one billion USD): anything above is a bug or
    an attack, not a card payment."""

    max_future_skew_seconds: float = Field(default=300.0, ge=0)
    """How far a transaction's event time may be ahead of the server clock. Five minutes
    absorbs clock drift between terminals and the server. A later one gets the fallback
    decision (`clock_skew`) and is not counted in the features, so that one bad clock cannot
    push the feature windows of a card forward; an outcome's later report time is taken as
    this far ahead. Both are counted, with how far ahead they were, in
    `fraud_clock_skew_seconds`."""


class TlsSettings(_Group):
    """TLS on the scoring port; off unless a certificate and key are given."""

    cert_file: FilePath | None = None
    """PEM server certificate chain. With `key_file`, the scoring port speaks TLS only."""

    key_file: FilePath | None = Field(default=None, validate_default=True)
    """PEM private key of `cert_file`; required with it, refused without it."""

    client_ca_file: FilePath | None = Field(default=None, validate_default=True)
    """PEM CA bundle that client certificates must chain to (mutual TLS): callers without
    such a certificate are refused. Needs `cert_file` and `key_file`."""

    @field_validator("key_file")
    @classmethod
    def _key_with_cert(cls, key_file: Path | None, info: ValidationInfo) -> Path | None:
        if "cert_file" in info.data and (info.data["cert_file"] is None) != (key_file is None):
            raise PydanticCustomError("tls_pair", "tls.cert_file and tls.key_file go together")
        return key_file

    @field_validator("client_ca_file")
    @classmethod
    def _ca_with_cert(cls, client_ca_file: Path | None, info: ValidationInfo) -> Path | None:
        if client_ca_file is not None and info.data.get("cert_file") is None:
            raise PydanticCustomError("tls_ca", "needs tls.cert_file and tls.key_file")
        return client_ca_file

    @property
    def enabled(self) -> bool:
        """Whether the scoring port uses TLS."""
        return self.cert_file is not None

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate."""
        return self.client_ca_file is not None


class ModelSettings(_Group):
    """How the server follows the registry: hot reload, library checks, the shadow."""

    poll_seconds: float = Field(default=1.0, ge=0)
    """How often the registry's aliases are read to pick up a promotion, a rollback or a
    new challenger. A look reads two small files; loading and checking a new model takes
    a second or so, off the request path. 0 turns hot reload off (SIGHUP and the admin
    `Reload` still look on demand)."""

    allow_major_library_difference: bool = False
    """Serve a model trained with another major version of onnxruntime or numpy
    than the server's. Refused by default: such a model may score differently in ways the
    golden sample does not catch. Minor differences are always served, logged and exported
    (`fraud_model_library_difference`)."""

    shadow_backlog: int = Field(default=4096, ge=1)
    """Transactions waiting for the challenger at most; beyond it the challenger skips them
    (`fraud_shadow_skipped_total{reason="backlog_full"}`) rather than queue without bound."""

    trusted_keys: list[str] = []
    """Ed25519 public keys (base64, as `fraud-train keys generate` prints them) whose
    manifest signatures this server accepts; list the old and the new key during a
    rotation. With any key listed, only versions signed by one of them are served. Empty
    (the development default): versions are served signed or not, with a warning
    (`model_signature_not_checked`); production mode refuses to start so."""

    revoked_keys: list[str] = []
    """Key ids (`ed25519-...`) whose signatures are refused, trusted or not: a leaked
    signing key, or the old key once every served version is signed again."""

    max_file_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    """Largest artifact file the server reads (manifest, ONNX graph, reason tables and
    the reports it hashes); a larger one is refused (`file_too_large`) unread."""


class DriftSettings(_Group):
    """Drift of live traffic from the model's reference period (`service.observability.drift`)."""

    window: int = Field(default=10_000, ge=100)
    """Most recent model-scored transactions the population stability index is computed
    over. 10,000 is a few seconds at peak and an hour or two off-peak: enough rows for ten
    bins per feature, recent enough to show a shift within minutes."""

    min_rows: int = Field(default=500, ge=1)
    """Rows the window needs before any PSI or live decision rate is exported: fewer would
    give noise, and an alert must not fire on a window just emptied by a model swap."""

    @field_validator("min_rows")
    @classmethod
    def _within_window(cls, min_rows: int, info: ValidationInfo) -> int:
        window = info.data.get("window")
        if window is not None and min_rows > window:
            raise PydanticCustomError("min_rows", "must not exceed drift.window")
        return min_rows


class AdminSettings(_Group):
    """The `fraud.v1.ModelAdmin` service: list models, force a reload."""

    token: SecretStr | None = None
    """Deprecated: give a caller of `auth.callers` the `admin` role instead. A bearer token
    (`authorization: Bearer <token>` metadata) that identifies a caller named `admin-token`
    holding the `admin` role only; the server warns at start while it is set. Unset (the
    default) and with no `admin` caller, the admin service is not offered at all. At least
    16 characters; use TLS, or it crosses the network in clear."""

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < MIN_ADMIN_TOKEN_LENGTH:
            raise PydanticCustomError(
                "token_too_short",
                "must be at least {minimum} characters",
                {"minimum": MIN_ADMIN_TOKEN_LENGTH},
            )
        return token


Role = Literal["score", "report", "read-model", "admin"]
"""What a caller may do: `score` (Score, ScoreStream, ScoreBatch), `report` (ReportOutcome),
`read-model` (GetModelInfo), `admin` (the `fraud.v1.ModelAdmin` service)."""

_CALLER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# How many hex digits of a token's digest the settings' description shows: enough to tell
# two apart in a startup log, too few to look the token up.
_SHOWN_DIGEST_DIGITS = 8


class CallerSettings(_Group):
    """One caller of the server: its name, its roles, and how it proves who it is."""

    name: str = Field(pattern=_CALLER_NAME)
    """How the caller is named in metrics, log lines and the decision and outcome records:
    letters, digits, `.`, `_` and `-`, at most 64 characters."""

    roles: list[Role] = Field(min_length=1)
    """What it may call: `score` (Score, ScoreStream, ScoreBatch), `report` (ReportOutcome),
    `read-model` (GetModelInfo), `admin` (`fraud.v1.ModelAdmin`). Health checks and
    reflection need no role."""

    token_sha256: list[str] = []
    """SHA-256 digests, in hex, of the bearer tokens it may present as
    `authorization: Bearer <token>` metadata (`printf %s "$TOKEN" | sha256sum`): the server
    keeps no token, only these. List the new digest beside the old while the caller rotates
    its token, then drop the old. Use long random tokens (`openssl rand -hex 32`): a short
    one could be found from its digest."""

    certificate_sans: list[str] = []
    """Subject alternative names (a DNS name, or a URI such as a SPIFFE id) that identify it
    on a mutual-TLS client certificate: a certificate from `tls.client_ca_file` carrying
    any of them is this caller. Needs `tls.client_ca_file`."""

    rank: int = Field(default=0, ge=0, le=1_000_000)
    """How far its outcome reports are trusted against other callers': when reports on one
    transaction disagree, the label is the highest-ranked caller's, the latest among equals,
    in the feature state and in retraining alike (docs/security.md, "Conflicting
    reports"). 0 for every caller (the default): the latest report decides. Give the
    issuer's chargeback feed the highest rank, so that no other caller can reverse its
    frauds. Written into each outcome record as it is received: a change applies to
    reports received from then on."""

    report_per_second: float | None = Field(default=None, gt=0)
    """This caller's ReportOutcome rate, when it needs another than
    `report_limit.per_second` (a chargeback feed sending a day's file at once)."""

    report_burst: int | None = Field(default=None, ge=1)
    """This caller's ReportOutcome burst, when it needs another than `report_limit.burst`."""

    @field_validator("token_sha256")
    @classmethod
    def _hex_digests(cls, digests: list[str]) -> list[str]:
        normalised = [digest.strip().lower() for digest in digests]
        for digest in normalised:
            if not _SHA256_HEX.fullmatch(digest):
                raise PydanticCustomError(
                    "token_digest",
                    "each must be a SHA-256 digest in hex (64 characters), not a token",
                )
        return normalised

    @field_serializer("token_sha256", when_used="json")
    def _digests_shortened(self, digests: list[str]) -> list[str]:
        return [digest[:_SHOWN_DIGEST_DIGITS] + "..." for digest in digests]

    @model_validator(mode="after")
    def _some_credential(self) -> Self:
        if not self.token_sha256 and not self.certificate_sans:
            raise PydanticCustomError(
                "no_credential", "a caller needs token_sha256 or certificate_sans"
            )
        return self


class AuthSettings(_Group):
    """Who may call what on the scoring port (docs/security.md)."""

    callers: list[CallerSettings] = []
    """The callers and their roles. A call is identified by its bearer token, else by its
    mutual-TLS client certificate; without an identity it gets UNAUTHENTICATED, and without
    the method's role PERMISSION_DENIED. Empty (the development default): every scoring
    method is open to anyone who reaches the port (the server warns at start), and the
    admin service is offered only with the deprecated `admin.token`; production mode
    refuses to start so. In the environment, a JSON list: `FRAUD_AUTH__CALLERS='[{"name":
    "pos-gateway", "roles": ["score", "report"], "token_sha256": ["..."]}]'`."""

    reflection: bool = True
    """Offer gRPC server reflection (the services and their messages, for grpcurl) to
    anyone, as health checks are: neither needs a role. Off, whoever reaches the port
    cannot list the methods."""

    @model_validator(mode="after")
    def _unambiguous(self) -> Self:
        for what, values in (
            ("name", [caller.name for caller in self.callers]),
            ("token digest", [d for caller in self.callers for d in caller.token_sha256]),
            ("certificate SAN", [s for caller in self.callers for s in caller.certificate_sans]),
        ):
            repeated = sorted({value for value in values if values.count(value) > 1})
            if repeated:
                shown = (
                    repeated[0][:_SHOWN_DIGEST_DIGITS] if what == "token digest" else repeated[0]
                )
                raise PydanticCustomError(
                    "ambiguous_caller",
                    "a {what} may identify one caller only: '{value}' is given twice",
                    {"what": what, "value": shown},
                )
        return self

    @property
    def open(self) -> bool:
        """Whether no caller is configured, so that the scoring methods are open to all."""
        return not self.callers


class ReportLimitSettings(_Group):
    """How fast each caller may report outcomes: a token bucket per caller identity and
    server process, refilled at `per_second` up to `burst`. A call beyond it gets
    RESOURCE_EXHAUSTED at once, nothing read or kept (docs/security.md, "Outcome floods").
    A caller's own `report_per_second` and `report_burst` take precedence. With no caller
    configured (open mode, development only) nothing is limited."""

    per_second: float = Field(default=100.0, gt=0)
    """Outcome reports a second each caller may send, on average, to each server process.
    Chargebacks and case verdicts come at a fraction of the scoring rate; 100 a second is
    8.6 million a day, and keeps a caller sending made-up ids to about 23 KB a second of
    quarantine (a line takes about 230 bytes)."""

    burst: int = Field(default=1000, ge=1)
    """Outcome reports a caller may send at once, above its rate, before it is held to it:
    a batch sent after a pause."""


class QuarantineSettings(_Group):
    """The quarantine of outcomes whose transaction the feature state does not hold (a
    made-up id, or one it has forgotten): kept as `quarantine-*.jsonl` segments in the
    outcome log's directory, with a budget of their own, so that no flood of such outcomes
    can make the outcome log's retention delete a genuine outcome. Kept only when the
    outcome log is (`outcome_log.directory`)."""

    max_bytes: int = Field(default=256 * MIB, ge=1)
    """Disk the quarantine may take, all workers together: beyond it the oldest quarantine
    segments are deleted, never an outcome log segment. About 1.2 million lines: months of
    late chargebacks (for transactions past the state horizon, which retraining reads from
    here), or three hours of a caller flooding at the default rate limit."""

    retention_days: float = Field(default=180.0, gt=0)
    """Age beyond which a quarantine segment is deleted; as the outcome log's, so that a
    late chargeback stays as long as the transaction it labels."""

    segment_bytes: int = Field(default=16 * MIB, ge=4096)
    """Size at which a quarantine segment is closed and a new one begun (also each UTC
    day): the granularity of its retention."""

    max_pending: int = Field(default=10_000, ge=1)
    """Quarantined outcomes waiting for the writer at most; beyond, new ones are dropped
    and counted (`fraud_record_log_dropped_total{log="quarantine"}`)."""


class ConnectionSettings(_Group):
    """Connections and the calls they hold open: how many and for how long, so that idle
    callers cannot take the server's capacity (docs/security.md). Keepalive, and the age at
    which a connection is renewed, are `server`'s."""

    max_idle_seconds: float = Field(default=120.0, gt=0)
    """A connection with no call open for this long is asked to close (HTTP/2 GOAWAY); its
    client reconnects at its next call. Frees what live but unused connections hold."""

    max_calls_per_connection: int = Field(default=512, ge=1)
    """Calls one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS,
    unary calls and streams alike); a client's further calls wait on its side. Bounds what
    one connection holds in the server (each call it opens takes memory before any limit
    below sees it) and keeps it from taking the whole stream budget. Twice
    `server.max_in_flight`: while the server is stalled, calls it has finished but not yet
    released still count, and a call above the cap is refused (UNAVAILABLE, never
    processed, safe to retry), so a lower cap refuses calls in a stall that the in-flight
    limit would have admitted (benchmarks/RESULTS.md, "Idle streams")."""

    max_open_streams: int = Field(default=1024, ge=1)
    """ScoreStream calls open at once, all connections together; beyond it a new stream
    gets RESOURCE_EXHAUSTED. Counted apart from `server.max_in_flight`: an open stream holds
    no in-flight slot (only the transactions it has read and not yet answered do), so idle
    streams never shed unary calls."""

    stream_idle_seconds: float = Field(default=60.0, gt=0)
    """A ScoreStream whose client sends no transaction for this long is ended with
    UNAVAILABLE (its client opens a new one when it has more to send), freeing its place in
    the stream budget."""

    stream_max_seconds: float = Field(default=300.0, gt=0)
    """Longest a ScoreStream stays open: it is ended with UNAVAILABLE before its next
    transaction is read (every transaction it carried has been answered). A connection
    older than `server.max_connection_age_seconds` plus `server.grace_seconds` is closed
    with its streams in any case."""

    request_read_seconds: float = Field(default=1.0, gt=0)
    """How long a unary call's request may take to arrive once the server has picked the
    call up: one that has not arrived by then is ended with UNAVAILABLE, freeing its
    in-flight slot. A request arrives with its call, within a round trip; an answer given
    a second later would be long past any payment's budget."""

    stream_max_batch: int = Field(default=32, ge=1)
    """Transactions of one ScoreStream scored together at most: those waiting when the
    server comes round to the stream, never waited for, are counted in order in one
    feature-state session and scored by one model call (answers in order, each exactly as
    alone). 32 bounds the time one batch holds the event loop to a few milliseconds; 1
    scores a stream one transaction at a time (benchmarks/RESULTS.md, "ScoreStream in
    batches")."""

    batch_max_transactions: int = Field(default=64, ge=1)
    """Transactions one ScoreBatch call may carry; a larger batch is refused whole with
    INVALID_ARGUMENT naming this setting. A batch holds the event loop while it is scored
    (about 0.1 ms a transaction), so 64 keeps that to a few milliseconds, and 64
    transactions with every id at its longest still fit `server.max_message_bytes` (64 KiB:
    raise it with this, or gRPC refuses a larger request with RESOURCE_EXHAUSTED)."""


class LoggingSettings(_Group):
    """Structured logs on standard output."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    """Lowest level written, for our logs and for libraries' (grpc's) alike. Case-insensitive."""

    sample_rate: float = Field(default=0.01, ge=0, le=1)
    """Share of requests that get a per-request log line. 1% keeps a useful sample at
    thousands of requests per second without the formatting cost on every one; metrics
    count every request."""

    format: Literal["auto", "json", "console"] = "auto"
    """`json`: one JSON object per line, for collectors; `console`: aligned, readable lines;
    `auto`: console on a terminal, JSON otherwise (containers, files, pipes)."""

    @field_validator("level", mode="before")
    @classmethod
    def _upper_case(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level


StateBackend = Literal["memory", "lmdb", "redis"]


class StateSettings(_Group):
    """Where the per-card, per-terminal and per-merchant feature state lives, and its bounds.

    Sizing (docs/features.md): a card takes 1.7 KB, a terminal or merchant 4.0 KB (with a
    7-day label delay), a transaction kept for outcomes and retries about 0.35 KB, plus
    about 40% of LMDB pages."""

    backend: StateBackend = "lmdb"
    """`lmdb`: a file in `path`, kept across restarts and crashes and shared by every worker
    process of this machine, so `--workers N` computes what one worker would. `redis`: a
    Redis 7 or Valkey server at `url`, shared by every worker of every replica; it bounds
    itself (`maxmemory`, set on the server), the `max_*` bounds below do not apply. `memory`:
    this process only, lost when it exits (tests, one-off runs); refused with several
    workers."""

    path: Path = Path("state")
    """Directory of the LMDB store, beside `decisions/` by default. Seed it from history
    with `fraud-train state build`; a store built for other feature settings is refused."""

    max_entities: int = Field(default=1_000_000, ge=1)
    """Cards kept at most, and as many terminals and merchants; beyond, about the least
    recently active are dropped (`fraud_feature_state_evictions_total{reason="capacity"}`).
    A dropped card starts again as new. 1,000,000 cards take about 1.7 GB of the store, as
    many terminals 4 GB, as many merchants 4 GB more: size `max_bytes` for what you keep."""

    max_transactions: int = Field(default=5_000_000, ge=1)
    """Scored transactions kept for their outcomes and retries; beyond, the oldest are
    dropped and an outcome for them is NOT_FOUND (kept in the outcome quarantine, which
    retraining reads but a flood of made-up ids can push out). Keep the transactions of
    your longest chargeback delay: rate x seconds."""

    max_bytes: int = Field(default=16 * GIB, ge=64 * 1024 * 1024)
    """Largest size of the LMDB file (its map size at most): the bounds above must fit in
    it, with room for LMDB's free pages. Space is only taken as it is used."""

    writemap: bool = True
    """LMDB writes its pages in the file's mapping instead of by a system call each at the
    commit: less CPU per transaction (about 10 µs, benchmarks/RESULTS.md). The map, and the
    file's size with it, starts at 32 MiB and grows ahead of the pages in use (by 32 MiB or
    an eighth, the larger, up to `max_bytes`), in every worker; the file's blocks are
    reserved 8-10 MiB ahead of the pages in use, so that a full disk refuses a transaction
    (the fallback answer) instead of killing the server (SIGBUS). Used only on a file
    system that rewrites allocated blocks in place (ext4, XFS, tmpfs); elsewhere (Btrfs,
    ZFS, NFS, overlayfs) it is off, logged at start (`state_writemap_off`)."""

    sync_seconds: float = Field(default=10.0, gt=0)
    """Seconds between flushes of the LMDB file to disk. A killed process loses nothing
    (the kernel holds its writes). A machine crash (power, kernel) loses up to this much,
    and can damage the file if the file system reorders writes: rebuild it then
    (docs/operations.md). A flush write-protects every page written since the last one
    (the next write to each faults) and flushes every core's TLB for each: flushing every
    second took 15-36 µs more system CPU a transaction than every 10 s
    (benchmarks/RESULTS.md)."""

    url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)
    """The Redis server of the `redis` backend (`redis://`, `rediss://` for TLS, or
    `unix://`), with its database number: one database per deployment, no other data in
    it. A password may go in the URL (`redis://:password@host:6379/0`); it is masked
    wherever the settings are shown. Set the server's `maxmemory` and
    `maxmemory-policy volatile-lru`: records expire after the state horizon, and beyond
    the memory bound the least recently used go first (the server warns otherwise)."""

    timeout_seconds: float = Field(default=0.01, gt=0, le=10)
    """How long the `redis` backend waits for the server (to connect, and for each reply)
    before the transaction gets the fallback decision (`state_unavailable`). A transaction
    takes two round trips on the scoring thread (more when it meets another replica's
    writes and runs again), so keep it well under
    `budget.server_budget_ms` (20 ms); 10 ms is several times Redis's p99 on a local
    network."""

    @field_serializer("url")
    def _password_masked(self, url: str) -> str:
        return mask_url_password(url)


def mask_url_password(url: str) -> str:
    """`url` with its password masked, and its query when it names one (`?password=`)."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", f":{_MASK}@"))
    if "password" in parts.query.lower():
        parts = parts._replace(query=_MASK)
    return url if parts == urlsplit(url) else urlunsplit(parts)


class RecordLogSettings(_Group):
    """A JSON-lines log kept for retraining (`service.records.segment_log`): where, how much,
    how long.

    Written off the request path: when the disk stalls or fails, records are dropped and
    counted (`fraud_record_log_dropped_total`), never delaying a call. With several workers
    each writes segments of its own (its process id is in their names) into the directory.
    """

    directory: Path | None = None
    """Directory of the log's segments, created if missing (a relative path is from the
    working directory): `decisions` and `outcomes` by default. In a container, mount a
    writable volume here, or the log goes with the container. An empty value (`""` in the
    file, or e.g. `FRAUD_DECISION_LOG__DIRECTORY=`) keeps no log."""

    max_bytes: int = Field(default=16 * GIB, ge=1)
    """Disk the log's segments may take, all workers together (16 GiB for decisions, 1 GiB
    for outcomes by default): beyond it the oldest segments are deleted. Size it for
    `retention_days` of traffic, or at least for the days a retrain learns from (label delay,
    evaluation, validation and training days): a decision line takes 600 to 1,000 bytes, so
    16 GiB hold about 20 million decisions, 30 days at 8 transactions a second; an outcome
    line takes about 200. A segment deleted for want of space while younger than
    `retention_days` is logged as a warning (`record_log_budget_short`)."""

    retention_days: float = Field(default=180.0, gt=0)
    """Age (from a segment's opening) beyond which a segment is deleted. Chargebacks arrive
    up to about 120 days after the transaction, and retraining needs the transactions they
    label: 180 days keeps both, with margin."""

    segment_bytes: int = Field(default=64 * MIB, ge=4096)
    """Size at which a segment is closed and a new one begun (a new one also starts each UTC
    day); retention deletes whole segments, so this is its granularity."""

    max_pending: int = Field(default=100_000, ge=1)
    """Records waiting for the writer at most; beyond, new ones are dropped. 100,000 rides
    out a disk stalled for a minute at over 1,500 transactions per second, at the cost of
    up to about 180 MB of memory for decisions (some 1.8 KB each while waiting)."""

    @field_validator("directory", mode="before")
    @classmethod
    def _empty_disables(cls, directory: object) -> object:
        # Neither the environment nor TOML can say None; an empty path would mean "here".
        return None if directory == "" else directory


Mode = Literal["development", "production"]


class ServeSettings(BaseSettings):
    """Everything `fraud-serve` needs besides the model itself."""

    model_config = SettingsConfigDict(
        env_prefix="FRAUD_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
        # A group's default may differ from its class's (the two record logs): a setting
        # given for one field of it keeps the group's other defaults.
        nested_model_default_partial_update=True,
    )

    registry: Path = Path("models")
    """Model registry directory (what `fraud-train` publishes into); the champion is served."""

    mode: Mode = "development"
    """`production` (also `fraud-serve --production`) refuses to start with a setting only
    fit for development (`ServeSettings.production_problems` lists them, each with the
    setting to fix); `development` starts with zero setup and warns instead."""

    server: ServerSettings = ServerSettings()
    """Ports, worker processes, concurrency and shutdown."""

    budget: BudgetSettings = BudgetSettings()
    """Server-side latency budget per request."""

    fallback: FallbackSettings = FallbackSettings()
    """Decision when the model cannot answer in time or is not loaded."""

    limits: LimitsSettings = LimitsSettings()
    """Request validation bounds."""

    tls: TlsSettings = TlsSettings()
    """TLS and mutual TLS on the scoring port."""

    logging: LoggingSettings = LoggingSettings()
    """Log level, per-request sampling and format."""

    models: ModelSettings = ModelSettings()
    """Hot reload, library version checks and the challenger's shadow."""

    drift: DriftSettings = DriftSettings()
    """The sliding window of the drift statistics."""

    admin: AdminSettings = AdminSettings()
    """The model administration service and its token."""

    auth: AuthSettings = AuthSettings()
    """Callers, their roles and credentials; reflection."""

    connections: ConnectionSettings = ConnectionSettings()
    """Limits on connections, streams and calls that hold them open."""

    state: StateSettings = StateSettings()
    """The feature state's store: in memory, in a file shared by the workers, or in Redis."""

    decision_log: RecordLogSettings = RecordLogSettings(directory=Path("decisions"))
    """Every decision given, with its transaction and features, for retraining."""

    outcome_log: RecordLogSettings = RecordLogSettings(directory=Path("outcomes"), max_bytes=GIB)
    """Every valid outcome of a transaction the feature state holds, for retraining: a
    fraction of the transactions, a fifth of a decision's size each, hence a budget of
    1 GiB by default."""

    outcome_quarantine: QuarantineSettings = QuarantineSettings()
    """Outcomes of transactions the feature state does not hold, kept apart from the
    outcome log with a budget of their own."""

    report_limit: ReportLimitSettings = ReportLimitSettings()
    """Each caller's ReportOutcome rate."""

    card_token_key: SecretStr = SecretStr(DEVELOPMENT_CARD_TOKEN_KEY)
    """HMAC key that turns a raw card number arriving as `card_id` into a stable token.
    Set it (`FRAUD_CARD_TOKEN_KEY`) in production, the same in every worker and across
    restarts, or a card's history splits. The default is a public development key: the
    server warns while it is in use."""

    card_token_key_id: str = Field(default=DEFAULT_KEY_ID, pattern=f"^{KEY_ID_PATTERN}$")
    """Name of `card_token_key`, written before each token (`k1:3f0c...`): 1-16 lower-case
    letters or digits, a new one for each new key. `tok` writes tokens as releases before
    key ids did (`tok_3f0c...`)."""

    previous_card_token_key: SecretStr | None = None
    """During a rotation, the key being retired (`FRAUD_PREVIOUS_CARD_TOKEN_KEY`): a card
    with no history under its new token continues the one kept under its old token
    (docs/security.md, "Rotating the token key"). Unset while `previous_card_token_key_id`
    is set: the current key, under another name (the upgrade from tokens without key ids)."""

    previous_card_token_key_id: str | None = Field(default=None, pattern=f"^{KEY_ID_PATTERN}$")
    """Name of the key being retired, as its tokens carry it; `tok` for the tokens of
    releases before key ids. Unset (the default): no rotation in progress. Remove both
    previous settings once the state horizon has passed since the rotation began."""

    @field_validator("card_token_key", "previous_card_token_key")
    @classmethod
    def _long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value()) < MIN_CARD_TOKEN_KEY_LENGTH:
            raise PydanticCustomError(
                "key_too_short",
                "must be at least {minimum} characters",
                {"minimum": MIN_CARD_TOKEN_KEY_LENGTH},
            )
        return key

    @model_validator(mode="after")
    def _previous_card_token_key_named(self) -> Self:
        previous_id = self.previous_card_token_key_id
        if previous_id is None and self.previous_card_token_key is not None:
            raise PydanticCustomError(
                "previous_key_unnamed",
                "previous_card_token_key needs previous_card_token_key_id, its tokens' id",
            )
        if previous_id == self.card_token_key_id:
            raise PydanticCustomError(
                "previous_key_id_reused",
                "previous_card_token_key_id must differ from card_token_key_id: each key has "
                "an id of its own",
            )
        return self

    @model_validator(mode="after")
    def _state_shared_by_workers(self) -> Self:
        if self.server.workers > 1 and self.state.backend == "memory":
            raise PydanticCustomError(
                "state_not_shared",
                'server.workers above 1 needs state.backend = "lmdb" or "redis": in memory each '
                "worker would count its own share of every card",
            )
        return self

    @model_validator(mode="after")
    def _certificates_need_mutual_tls(self) -> Self:
        if not self.tls.mutual and any(c.certificate_sans for c in self.auth.callers):
            raise PydanticCustomError(
                "certificates_without_mutual_tls",
                "auth.callers: certificate_sans identify callers by their client certificates, "
                "which only mutual TLS asks for: set tls.client_ca_file",
            )
        return self

    def card_tokenizer(self) -> CardTokenizer:
        """The tokenizer of these settings: the server's and `fraud-train state build`'s,
        which must tokenise alike."""
        previous_id = self.previous_card_token_key_id
        previous_key = None
        if previous_id is not None:
            previous_key = (self.previous_card_token_key or self.card_token_key).get_secret_value()
        return CardTokenizer(
            self.card_token_key.get_secret_value().encode(),
            self.card_token_key_id,
            previous_key=None if previous_key is None else previous_key.encode(),
            previous_key_id=previous_id,
        )

    @property
    def uses_development_card_token_key(self) -> bool:
        """Whether `card_token_key` is the public development default."""
        return self.card_token_key.get_secret_value() == DEVELOPMENT_CARD_TOKEN_KEY

    def production_problems(self) -> list[str]:
        """What production mode refuses in these settings, each naming the setting to fix."""
        problems = []
        if not self.tls.enabled:
            problems.append(
                "tls: the scoring port is plaintext; set tls.cert_file and tls.key_file "
                "(FRAUD_TLS__CERT_FILE, FRAUD_TLS__KEY_FILE)"
            )
        if self.admin.token is not None and not self.tls.enabled:
            problems.append(
                "admin.token: an admin token sent over plaintext can be read on the network; "
                "enable TLS or unset FRAUD_ADMIN__TOKEN"
            )
        if self.auth.open:
            problems.append(
                "auth.callers: no caller roles configured, so every scoring method is open to "
                "anyone who reaches the port; configure auth.callers (FRAUD_AUTH__CALLERS)"
            )
        if self.uses_development_card_token_key:
            problems.append(
                "card_token_key: the public development key would make card tokens "
                "reversible by anyone; set FRAUD_CARD_TOKEN_KEY to a secret"
            )
        if not self.models.trusted_keys:
            problems.append(
                "models.trusted_keys: no key to check model signatures with, so any file "
                "written to the registry would be served; generate one with `fraud-train "
                "keys generate` and set FRAUD_MODELS__TRUSTED_KEYS"
            )
        return problems

    def describe(self) -> dict[str, Any]:
        """The effective settings as JSON-ready values, secrets masked."""
        return self.model_dump(mode="json")


# Environment variables of earlier releases, refused rather than silently ignored.
RENAMED_VARIABLES = {"FRAUD_OUTCOMES_DIRECTORY": "FRAUD_OUTCOME_LOG__DIRECTORY"}


def load_settings(config_file: Path | None = None) -> ServeSettings:
    """Settings from the environment over `config_file` (TOML) over the defaults."""
    for old, new in RENAMED_VARIABLES.items():
        if old in os.environ:
            raise ConfigError(f"{old} is no longer read: set {new} instead")
    return load_layered_settings(ServeSettings, config_file)
