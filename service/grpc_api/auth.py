"""Callers and roles: who a call comes from, and whether it may call its method.

Every method of the scoring and admin services needs a role (`METHOD_ROLES`); health
checks and reflection need none. A call is identified once, when the server picks it up,
before its request is read:

1. a bearer token (`authorization: Bearer <token>` metadata): its SHA-256 digest is
   compared, in constant time, with every configured digest. A token that matches none
   is no identity, even on a connection whose certificate would identify a caller: a
   wrong token is a mistake to report, not to paper over;
2. else the mutual-TLS client certificate: a subject alternative name on some caller's
   allow-list is that caller (only SANs count: a certificate without any identifies no
   one, whatever its common name);
3. else no one.

No one: UNAUTHENTICATED. Someone without the method's role: PERMISSION_DENIED. Both are
counted by method and caller (`fraud_auth_refusals_total`) and logged at most once a
minute per method, caller and status, with the number left unlogged since the last line
(`RefusalLog`): a client retrying a bad token in a loop must not fill the disk. No token
ever reaches a log, a metric or an answer; the server holds digests only.

Open mode: with no caller configured (`auth.callers` empty, the development default) the
scoring methods are open to anyone and the admin service needs the `admin` role still,
which only the deprecated `admin.token` can then give (a caller named `admin-token`).

Costs, per call: one metadata scan; with a token one SHA-256 and a `compare_digest` per
configured digest; with a certificate two reads of the call's peer identity and a dict
lookup; then a frozenset membership test. Measured in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from pydantic import SecretStr

from service.config.settings import AuthSettings, Role
from service.grpc_api._proto.fraud.v1 import admin_pb2, scoring_pb2

AUTHORIZATION_KEY = "authorization"
# The scheme is case-insensitive (RFC 7235); the token is compared exactly.
_BEARER = "bearer "
ADMIN_TOKEN_CALLER = "admin-token"
# The caller label of a refusal when no caller was identified.
NO_CALLER = ""

_SAN_PROPERTY = "x509_subject_alternative_name"
REFUSAL_LOG_SECONDS = 60.0

_SCORING = scoring_pb2.DESCRIPTOR.services_by_name["FraudScoring"]
_ADMIN = admin_pb2.DESCRIPTOR.services_by_name["ModelAdmin"]
_ROLE_BY_NAME: dict[str, Role] = {
    "Score": "score",
    "ScoreStream": "score",
    "ScoreBatch": "score",
    "ReportOutcome": "report",
    "GetModelInfo": "read-model",
    "ListModels": "admin",
    "Reload": "admin",
    "ChangeList": "admin",
}


def _method_roles() -> dict[str, Role]:
    roles = {}
    for service in (_SCORING, _ADMIN):
        for method in service.methods:
            # A method added to the contract without a role here fails at import: every
            # method must say who may call it.
            roles[f"/{service.full_name}/{method.name}"] = _ROLE_BY_NAME[method.name]
    return roles


METHOD_ROLES: Final[Mapping[str, Role]] = _method_roles()
"""The role each guarded method needs, by full method path ("/fraud.v1.FraudScoring/Score")."""


@dataclass(frozen=True, slots=True)
class Caller:
    """An identified caller: its configured name and its roles."""

    name: str
    roles: frozenset[Role]


class CallerDirectory:
    """The configured callers, looked up by token or by client certificate."""

    def __init__(
        self,
        callers: Iterable[tuple[Caller, Sequence[bytes], Sequence[str]]] = (),
        *,
        open_scoring: bool = False,
    ) -> None:
        """`callers`: each caller with the SHA-256 digests of its tokens and the SANs that
        identify it on a client certificate. `open_scoring`: the scoring methods need no
        caller (open mode)."""
        self.open_scoring = open_scoring
        self._digests: list[tuple[bytes, Caller]] = []
        self._by_san: dict[bytes, Caller] = {}
        names: list[str] = []
        roles: set[Role] = set()
        for caller, digests, sans in callers:
            names.append(caller.name)
            roles |= caller.roles
            self._digests += [(digest, caller) for digest in digests]
            self._by_san |= {san.encode(): caller for san in sans}
        self.names: tuple[str, ...] = tuple(names)
        """Every caller's name, in the configured order."""
        self.roles: frozenset[Role] = frozenset(roles)
        """The roles some caller holds."""

    @classmethod
    def from_settings(
        cls, settings: AuthSettings, admin_token: SecretStr | None = None
    ) -> CallerDirectory:
        """The callers of `settings`, and `admin_token`'s caller (`ADMIN_TOKEN_CALLER`,
        role admin only) when the deprecated token is set."""
        entries = [
            (
                Caller(caller.name, frozenset(caller.roles)),
                [bytes.fromhex(digest) for digest in caller.token_sha256],
                caller.certificate_sans,
            )
            for caller in settings.callers
        ]
        if admin_token is not None:
            digest = hashlib.sha256(admin_token.get_secret_value().encode()).digest()
            entries.append((Caller(ADMIN_TOKEN_CALLER, frozenset({"admin"})), [digest], []))
        # Open mode follows the configured callers alone: the admin token's caller must
        # not close the scoring methods of a development server.
        return cls(entries, open_scoring=settings.open)

    @property
    def checks_certificates(self) -> bool:
        """Whether any caller is identified by its client certificate."""
        return bool(self._by_san)

    def by_token(self, token: str) -> Caller | None:
        """The caller whose token this is; None for a token no caller holds.

        Every digest is compared, whichever matches: the time taken says nothing about
        which one did, or how close a wrong token came."""
        presented = hashlib.sha256(token.encode()).digest()
        found = None
        for digest, caller in self._digests:
            if hmac.compare_digest(presented, digest):
                found = caller
        return found

    def by_certificate(
        self, identity_key: str | None, identities: Iterable[bytes] | None
    ) -> Caller | None:
        """The caller a client certificate's peer identity names: `identity_key` and
        `identities` as gRPC gives them (`peer_identity_key()`, `peer_identities()`). Only
        subject alternative names count: gRPC falls back to the common name when a
        certificate has none, and a common name is not an allow-listed SAN."""
        if identity_key != _SAN_PROPERTY or identities is None:
            return None
        for san in identities:
            caller = self._by_san.get(san)
            if caller is not None:
                return caller
        return None


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the call's `authorization` metadata; "" when that is not a bearer
    token (it identifies no one); None when the call sent none."""
    for key, value in metadata or ():
        if key == AUTHORIZATION_KEY:
            if isinstance(value, str) and value[: len(_BEARER)].lower() == _BEARER:
                return value[len(_BEARER) :].strip()
            return ""
    return None


class RefusalLog:
    """Decides which refusals get a log line: the first of each (method, caller, status)
    and then at most one a `period`, telling how many went unlogged in between."""

    def __init__(
        self, period: float = REFUSAL_LOG_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._period = period
        self._clock = clock
        # (rpc, caller, code) -> (when its last line was written, refusals since unlogged).
        # Bounded: methods x (configured callers + NO_CALLER) x two statuses.
        self._entries: dict[tuple[str, str, str], tuple[float, int]] = {}

    def due(self, rpc: str, caller: str, code: str) -> int | None:
        """None when this refusal goes unlogged; else the refusals of the same kind left
        unlogged since the last line (0 for the first)."""
        key = (rpc, caller, code)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = (now, 0)
            return 0
        logged_at, suppressed = entry
        if now - logged_at < self._period:
            self._entries[key] = (logged_at, suppressed + 1)
            return None
        self._entries[key] = (now, 0)
        return suppressed
