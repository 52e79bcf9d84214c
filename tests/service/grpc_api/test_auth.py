"""Callers and roles over real loopback gRPC and real mutual TLS, with certificates made
here: every role against every method, identified by client certificate or by token, with
no identity and with the wrong role; the refusal counters; the refusal log's throttle; the
caller's name in the decision and outcome records; open mode; reflection switched off.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr

from service.app import build_scorer
from service.config.settings import (
    AdminSettings,
    AuthSettings,
    CallerSettings,
    LoggingSettings,
    Role,
    ServerSettings,
    ServeSettings,
    TlsSettings,
)
from service.core.callers import current_caller
from service.features import FeatureEngine
from service.grpc_api._proto.fraud.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
)
from service.grpc_api.auth import METHOD_ROLES, NO_CALLER, Caller, CallerDirectory, RefusalLog
from service.grpc_api.client import bearer_metadata, build_outcome_request, build_score_request
from service.grpc_api.interceptors import UNAUTHENTICATED_DETAILS
from service.grpc_api.server import set_serving
from service.model.store import ModelStore
from service.model.watcher import ModelWatcher
from service.records.decision_writer import DecisionLogWriter
from service.records.outcome_writer import OutcomeLogWriter
from tests.conftest import TrainedModel
from tests.process_metrics import sample_value
from tests.service.loopback import LoopbackServer
from tests.service.registry_copies import copy_registry
from tests.tls_certificates import CertificateAuthority, ClientCertificate

TIMEOUT = 10.0  # generous: the machine is shared; no test relies on it running out
ROLES: tuple[Role, ...] = ("score", "report", "read-model", "admin")
METHODS = tuple(path.rpartition("/")[2] for path in METHOD_ROLES)
ROLE_OF = {path.rpartition("/")[2]: role for path, role in METHOD_ROLES.items()}
STRANGER_SAN = "stranger.callers.test"  # on a certificate from the CA, on nobody's list
UNKNOWN_TOKEN = "a-token-that-no-caller-holds-0123456789"
SCORED_EARLIER = "scored-at-setup"  # the transaction every ReportOutcome reports on
Status = grpc.StatusCode
Metadata = tuple[tuple[str, str], ...]


def _token(role: Role) -> str:
    return f"token-of-the-{role}-caller-0123456789abcdef"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _san(role: Role) -> str:
    return f"{role}.callers.test"


def _callers() -> list[CallerSettings]:
    """Per role, one caller known by its certificate and one by its token, each holding
    that role only."""
    callers = []
    for role in ROLES:
        callers.append(
            CallerSettings(name=f"{role}-cert", roles=[role], certificate_sans=[_san(role)])
        )
        callers.append(
            CallerSettings(name=f"{role}-token", roles=[role], token_sha256=[_digest(_token(role))])
        )
    return callers


@dataclass
class Pki:
    """The test's authority, the server's certificate, and the clients' certificates."""

    authority: CertificateAuthority
    tls: TlsSettings
    clients: dict[str, ClientCertificate]

    def channel(self, target: str, client: str) -> grpc.Channel:
        """A mutual-TLS channel of its own (its own connection) presenting `client`."""
        credentials = grpc.ssl_channel_credentials(
            self.authority.ca_file.read_bytes(), **self.clients[client].credentials
        )
        return grpc.secure_channel(
            target, credentials, options=[("grpc.use_local_subchannel_pool", 1)]
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    authority = CertificateAuthority(tmp_path_factory.mktemp("pki"))
    server = authority.issue_server()
    clients: dict[str, ClientCertificate] = {
        role: authority.issue_client(role, dns_names=[_san(role)]) for role in ROLES
    }
    clients["stranger"] = authority.issue_client("stranger", dns_names=[STRANGER_SAN])
    # A common name equal to a listed SAN, and no SAN at all: it must identify no one.
    clients["common-name-only"] = authority.issue_client(_san("admin"))
    tls = TlsSettings(
        cert_file=server.cert_file, key_file=server.key_file, client_ca_file=authority.ca_file
    )
    return Pki(authority, tls, clients)


def _settings(pki: Pki, **changes: Any) -> ServeSettings:
    fields: dict[str, Any] = {
        "server": ServerSettings(host="127.0.0.1", port=0),
        "tls": pki.tls,
        "auth": AuthSettings(callers=_callers()),
        "logging": LoggingSettings(sample_rate=0.0),
    } | changes
    return ServeSettings(**fields)


@pytest.fixture(scope="module")
def champion(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """The trained champion, loaded, in a private copy of its registry (Reload reads it)."""
    store = ModelStore(copy_registry(trained_model, tmp_path_factory.mktemp("auth") / "models"))
    store.load_champion()
    return store


def _serve(settings: ServeSettings, store: ModelStore, **listeners: Any) -> LoopbackServer:
    assert store.current is not None
    engine = FeatureEngine(store.current.manifest.feature_config)
    scorer = build_scorer(settings, engine, store, **listeners)
    server = LoopbackServer(settings, scorer, models=ModelWatcher(store))
    server.run(set_serving(server.health))
    return server


def _request(transaction_id: str) -> scoring_pb2.ScoreRequest:
    when = datetime.now(UTC) - timedelta(hours=1)
    return build_score_request(transaction_id, "card-1", "term-1", 1250, "EUR", when)


_numbers = itertools.count()
ADMIN_METHODS = ("ListModels", "Reload", "ChangeList")


def _call(channel: grpc.Channel, method: str, metadata: Metadata) -> grpc.StatusCode:
    """Call `method` once on `channel`; the status it ends with."""
    scoring = scoring_pb2_grpc.FraudScoringStub(channel)
    admin = admin_pb2_grpc.ModelAdminStub(channel)
    options: dict[str, Any] = {"timeout": TIMEOUT, "metadata": metadata}
    calls: dict[str, Callable[[], object]] = {
        "Score": lambda: scoring.Score(_request(f"tx-{next(_numbers)}"), **options),
        "ScoreStream": lambda: list(
            scoring.ScoreStream(iter([_request(f"tx-{next(_numbers)}")]), **options)
        ),
        "ScoreBatch": lambda: scoring.ScoreBatch(
            scoring_pb2.ScoreBatchRequest(transactions=[_request(f"tx-{next(_numbers)}")]),
            **options,
        ),
        "ReportOutcome": lambda: scoring.ReportOutcome(
            build_outcome_request(SCORED_EARLIER, True, datetime.now(UTC)), **options
        ),
        "GetModelInfo": lambda: scoring.GetModelInfo(scoring_pb2.GetModelInfoRequest(), **options),
        "ListModels": lambda: admin.ListModels(admin_pb2.ListModelsRequest(), **options),
        "Reload": lambda: admin.Reload(admin_pb2.ReloadRequest(), **options),
        "ChangeList": lambda: admin.ChangeList(
            admin_pb2.ChangeListRequest(list="block", kind="country", value="KP", reason="t"),
            **options,
        ),
    }
    try:
        calls[method]()
    except grpc.RpcError as error:
        failed: Any = error  # an RpcError that is also a grpc.Call
        code: grpc.StatusCode = failed.code()
        return code
    return Status.OK


@dataclass(frozen=True)
class Case:
    """One cell of the matrix: who calls, how it proves it, which method, what it gets."""

    identity: str  # "certificate", "token", "none" or "unknown-token"
    role: Role | None
    method: str

    @property
    def client(self) -> str:
        return self.role if self.identity == "certificate" and self.role else "stranger"

    @property
    def metadata(self) -> Metadata:
        if self.identity == "token" and self.role:
            return bearer_metadata(_token(self.role))
        if self.identity == "unknown-token":
            return bearer_metadata(UNKNOWN_TOKEN)
        return ()

    @property
    def caller(self) -> str:
        """The caller the server identifies (NO_CALLER for none)."""
        if self.role is None:
            return NO_CALLER
        return f"{self.role}-{'cert' if self.identity == 'certificate' else 'token'}"

    @property
    def expected(self) -> grpc.StatusCode:
        if self.role is None:
            return Status.UNAUTHENTICATED
        return Status.OK if ROLE_OF[self.method] == self.role else Status.PERMISSION_DENIED

    def __str__(self) -> str:
        return f"{self.identity}-{self.role or 'nobody'}-{self.method}"


MATRIX = [
    *(
        Case(identity, role, method)
        for identity in ("certificate", "token")
        for role in ROLES
        for method in METHODS
    ),
    *(Case(identity, None, method) for identity in ("none", "unknown-token") for method in METHODS),
]


@pytest.fixture(scope="module")
def matrix_server(
    pki: Pki, champion: ModelStore
) -> Iterator[tuple[LoopbackServer, dict[str, grpc.Channel]]]:
    server = _serve(_settings(pki), champion)
    channels = {client: pki.channel(server.target, client) for client in pki.clients}
    scorer = scoring_pb2_grpc.FraudScoringStub(channels["score"])
    scorer.Score(_request(SCORED_EARLIER), timeout=TIMEOUT)
    yield server, channels
    for channel in channels.values():
        channel.close()
    server.stop()


def _refusals(method: str) -> dict[tuple[str, str], float]:
    """Every refusal series of `method`: (caller, code) -> count."""
    callers = [NO_CALLER, *(caller.name for caller in _callers())]
    return {
        (caller, code): sample_value(
            "fraud_auth_refusals_total", {"rpc": method, "caller": caller, "code": code}
        )
        or 0.0
        for caller in callers
        for code in ("UNAUTHENTICATED", "PERMISSION_DENIED")
    }


def _requests(method: str, code: str) -> float:
    labels = {"rpc": method, "code": code}
    return sample_value("fraud_rpc_requests_total", labels) or 0.0


@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_each_role_may_call_its_methods_only(
    case: Case, matrix_server: tuple[LoopbackServer, dict[str, grpc.Channel]]
) -> None:
    """The status each identity gets from each method, and the one refusal series that
    counts it (by method and caller), no other."""
    _server, channels = matrix_server
    refusals_before = _refusals(case.method)
    requests_before = _requests(case.method, case.expected.name)

    assert _call(channels[case.client], case.method, case.metadata) == case.expected

    moved = {
        key: count - refusals_before[key]
        for key, count in _refusals(case.method).items()
        if count != refusals_before[key]
    }
    if case.expected is Status.OK:
        assert moved == {}
    else:
        assert moved == {(case.caller, case.expected.name): 1.0}
    if case.method not in ADMIN_METHODS:  # the scoring service's calls
        _wait_until(lambda: _requests(case.method, case.expected.name) == requests_before + 1)


def test_the_matrix_covers_every_method_and_role() -> None:
    """Every guarded method needs one of the four roles, and each role some method."""
    assert set(METHODS) == {
        "Score",
        "ScoreStream",
        "ScoreBatch",
        "ReportOutcome",
        "GetModelInfo",
        "ListModels",
        "Reload",
        "ChangeList",
    }
    assert set(ROLE_OF.values()) == set(ROLES)


def test_a_wrong_token_is_no_identity_even_with_a_known_certificate(
    matrix_server: tuple[LoopbackServer, dict[str, grpc.Channel]],
) -> None:
    """A token decides: a wrong one is UNAUTHENTICATED, whatever the certificate says."""
    _server, channels = matrix_server
    wrong = bearer_metadata(UNKNOWN_TOKEN)
    assert _call(channels["score"], "Score", wrong) == Status.UNAUTHENTICATED
    not_bearer = (("authorization", _token("score")),)
    assert _call(channels["stranger"], "Score", not_bearer) == Status.UNAUTHENTICATED
    lower_case = (("authorization", f"bearer {_token('score')}"),)
    assert _call(channels["stranger"], "Score", lower_case) == Status.OK


def test_a_certificate_without_subject_alternative_names_identifies_no_one(
    matrix_server: tuple[LoopbackServer, dict[str, grpc.Channel]],
) -> None:
    """A common name equal to an allow-listed SAN is not that SAN: UNAUTHENTICATED."""
    _server, channels = matrix_server
    assert _call(channels["common-name-only"], "ListModels", ()) == Status.UNAUTHENTICATED


def test_the_refusal_details_say_how_to_identify_and_echo_no_token(
    matrix_server: tuple[LoopbackServer, dict[str, grpc.Channel]],
) -> None:
    _server, channels = matrix_server
    stub = scoring_pb2_grpc.FraudScoringStub(channels["stranger"])
    with pytest.raises(grpc.RpcError) as raised:
        stub.Score(_request("refused"), timeout=TIMEOUT, metadata=bearer_metadata(UNKNOWN_TOKEN))
    failed: Any = raised.value
    assert failed.details() == UNAUTHENTICATED_DETAILS
    assert "authorization: Bearer <token>" in failed.details()
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetModelInfo(
            scoring_pb2.GetModelInfoRequest(),
            timeout=TIMEOUT,
            metadata=bearer_metadata(_token("score")),
        )
    failed = raised.value
    assert failed.details() == "caller 'score-token' lacks the 'read-model' role"


def test_health_needs_no_caller(
    matrix_server: tuple[LoopbackServer, dict[str, grpc.Channel]],
) -> None:
    """Probes answer whoever asks: no token, a certificate nobody listed."""
    _server, channels = matrix_server
    health: Any = health_pb2_grpc.HealthStub(channels["stranger"])
    response = health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_refusals_are_logged_once_a_minute_per_method_and_caller_and_never_with_a_token(
    pki: Pki, champion: ModelStore
) -> None:
    """Twenty refusals of one kind make one log line, and a second kind its own; each
    refusal is counted; no log line holds a token, good or bad."""
    server = _serve(_settings(pki), champion)
    stranger = pki.channel(server.target, "stranger")
    before = _refusals("Score")
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(20):
                _call(stranger, "Score", bearer_metadata(UNKNOWN_TOKEN))
            for _ in range(5):
                _call(stranger, "Score", bearer_metadata(_token("report")))
    finally:
        stranger.close()
        server.stop()
    refused = [line for line in logs if line["event"] == "call_refused"]
    assert [(line["caller"], line["code"], line["suppressed"]) for line in refused] == [
        (NO_CALLER, "UNAUTHENTICATED", 0),
        ("report-token", "PERMISSION_DENIED", 0),
    ]
    assert refused[0]["certificate_sans"] == [STRANGER_SAN]
    assert refused[0]["token_sent"] is True
    after = _refusals("Score")
    assert after[NO_CALLER, "UNAUTHENTICATED"] - before[NO_CALLER, "UNAUTHENTICATED"] == 20
    assert (
        after["report-token", "PERMISSION_DENIED"] - before["report-token", "PERMISSION_DENIED"]
        == 5
    )
    text = json.dumps(logs, default=str)
    for secret in (UNKNOWN_TOKEN, _token("report"), _token("score")):
        assert secret not in text


def test_the_refusal_log_writes_again_after_its_period_with_the_count_it_left_out() -> None:
    now = [100.0]
    log = RefusalLog(period=60.0, clock=lambda: now[0])
    assert log.due("Score", "", "UNAUTHENTICATED") == 0
    assert [log.due("Score", "", "UNAUTHENTICATED") for _ in range(3)] == [None] * 3
    assert log.due("Score", "pos", "PERMISSION_DENIED") == 0  # another kind: its own line
    assert log.due("ReportOutcome", "", "UNAUTHENTICATED") == 0  # another method too
    now[0] += 59.9
    assert log.due("Score", "", "UNAUTHENTICATED") is None
    now[0] += 0.2
    assert log.due("Score", "", "UNAUTHENTICATED") == 4
    assert log.due("Score", "", "UNAUTHENTICATED") is None


def test_a_token_is_found_among_several_and_a_rotated_pair_both_work() -> None:
    """Two tokens for one caller (a rotation): either identifies it; others identify no one."""
    old, new = "old-token-0123456789abcdef", "new-token-0123456789abcdef"
    pos = Caller("pos", frozenset({"score"}))
    directory = CallerDirectory(
        [
            (Caller("other", frozenset({"report"})), [hashlib.sha256(b"other-token").digest()], []),
            (
                pos,
                [hashlib.sha256(old.encode()).digest(), hashlib.sha256(new.encode()).digest()],
                [],
            ),
        ]
    )
    assert directory.by_token(old) == pos
    assert directory.by_token(new) == pos
    assert directory.by_token(new + "x") is None
    assert directory.by_token("") is None


def test_the_caller_is_written_in_the_decision_and_outcome_records(
    pki: Pki, champion: ModelStore, tmp_path: Path
) -> None:
    """Each record names the caller whose call made it: by token or by certificate."""
    assert champion.current is not None
    config = champion.current.manifest.feature_config
    decisions = DecisionLogWriter(tmp_path / "decisions", feature_config=config)
    outcomes = OutcomeLogWriter(tmp_path / "outcomes")
    callers = AuthSettings(
        callers=[
            CallerSettings(
                name="pos-gateway", roles=["score", "report"], certificate_sans=[_san("score")]
            ),
            CallerSettings(
                name="chargebacks", roles=["report"], token_sha256=[_digest(_token("report"))]
            ),
        ]
    )
    server = _serve(
        _settings(pki, auth=callers),
        champion,
        answer_listeners=[decisions],
        outcome_listeners=[outcomes],
    )
    gateway = pki.channel(server.target, "score")
    stranger = pki.channel(server.target, "stranger")
    try:
        scoring = scoring_pb2_grpc.FraudScoringStub(gateway)
        scoring.Score(_request("tx-recorded"), timeout=TIMEOUT)
        list(scoring.ScoreStream(iter([_request("tx-streamed")]), timeout=TIMEOUT))
        reported = build_outcome_request("tx-recorded", True, datetime.now(UTC))
        scoring.ReportOutcome(reported, timeout=TIMEOUT)
        scoring_pb2_grpc.FraudScoringStub(stranger).ReportOutcome(
            reported, timeout=TIMEOUT, metadata=bearer_metadata(_token("report"))
        )
    finally:
        gateway.close()
        stranger.close()
        server.stop()
        decisions.close()
        outcomes.close()
    decided = _lines(tmp_path / "decisions")
    assert {line["transaction_id"]: line["caller"] for line in decided} == {
        "tx-recorded": "pos-gateway",
        "tx-streamed": "pos-gateway",
    }
    assert [line["caller"] for line in _lines(tmp_path / "outcomes")] == [
        "pos-gateway",
        "chargebacks",
    ]
    assert current_caller() == ""  # the test's own context never had a caller


def _lines(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for segment in sorted(directory.iterdir())
        for line in segment.read_text().splitlines()
    ]


def test_without_callers_the_scoring_methods_are_open_and_the_server_says_so(
    champion: ModelStore,
) -> None:
    """Development's zero setup: no caller configured, every scoring method answers anyone
    over plaintext, the admin service is not offered, and one warning says so."""
    settings = ServeSettings(server=ServerSettings(host="127.0.0.1", port=0))
    with structlog.testing.capture_logs() as logs:
        server = _serve(settings, champion)
    channel = grpc.insecure_channel(server.target)
    try:
        scoring = scoring_pb2_grpc.FraudScoringStub(channel)
        scoring.Score(_request(SCORED_EARLIER), timeout=TIMEOUT)
        statuses = {method: _call(channel, method, ()) for method in METHODS}
    finally:
        channel.close()
        server.stop()
    assert statuses == {
        "Score": Status.OK,
        "ScoreStream": Status.OK,
        "ScoreBatch": Status.OK,
        "ReportOutcome": Status.OK,
        "GetModelInfo": Status.OK,
        "ListModels": Status.UNIMPLEMENTED,
        "Reload": Status.UNIMPLEMENTED,
        "ChangeList": Status.UNIMPLEMENTED,
    }
    assert [line["event"] for line in logs if line["log_level"] == "warning"] == [
        "callers_not_configured"
    ]


def test_the_deprecated_admin_token_opens_the_admin_service_only(champion: ModelStore) -> None:
    """admin.token alone: the scoring methods stay open (no callers configured), the admin
    service needs that token, and the server warns that it is deprecated."""
    token = "an-admin-token-for-the-shortcut"
    settings = ServeSettings(
        server=ServerSettings(host="127.0.0.1", port=0),
        admin=AdminSettings(token=SecretStr(token)),
    )
    with structlog.testing.capture_logs() as logs:
        server = _serve(settings, champion)
    channel = grpc.insecure_channel(server.target)
    try:
        statuses = [
            _call(channel, "GetModelInfo", ()),
            _call(channel, "ListModels", ()),
            _call(channel, "ListModels", bearer_metadata(token)),
        ]
    finally:
        channel.close()
        server.stop()
    assert statuses == [Status.OK, Status.UNAUTHENTICATED, Status.OK]
    assert "admin_token_deprecated" in [line["event"] for line in logs]


def test_reflection_can_be_switched_off(pki: Pki, champion: ModelStore) -> None:
    """With reflection off nobody can list the methods; health still answers."""
    server = _serve(
        _settings(pki, auth=AuthSettings(callers=_callers(), reflection=False)), champion
    )
    channel = pki.channel(server.target, "stranger")
    try:
        stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT))
        failed: Any = raised.value
        health: Any = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status
    finally:
        channel.close()
        server.stop()
    assert failed.code() == Status.UNIMPLEMENTED
    assert status == health_pb2.HealthCheckResponse.SERVING


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
