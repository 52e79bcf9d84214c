"""Generated calls for the fuzz run: structured requests with hostile field values, and raw
byte mutations of valid messages, across every RPC the server offers.

Every case is built from a `random.Random`, so a seed gives the same cases again. A case
names the method's full path, the request as bytes (sent without a serializer, so that
bytes no protobuf library would write reach the server), and the metadata.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from grpc_health.v1 import health_pb2

from service.grpc_api._proto.fraud.v1 import admin_pb2, scoring_pb2

SCORING = "/fraud.v1.FraudScoring"
ADMIN = "/fraud.v1.ModelAdmin"
SCORE = f"{SCORING}/Score"
SCORE_STREAM = f"{SCORING}/ScoreStream"
SCORE_BATCH = f"{SCORING}/ScoreBatch"
REPORT_OUTCOME = f"{SCORING}/ReportOutcome"
GET_MODEL_INFO = f"{SCORING}/GetModelInfo"
LIST_MODELS = f"{ADMIN}/ListModels"
RELOAD = f"{ADMIN}/Reload"
HEALTH = "/grpc.health.v1.Health/Check"
UNKNOWN_METHOD = f"{SCORING}/NoSuchMethod"
METHODS = (
    SCORE, SCORE_STREAM, SCORE_BATCH, REPORT_OUTCOME, GET_MODEL_INFO, LIST_MODELS, RELOAD,
    HEALTH, UNKNOWN_METHOD,
)  # fmt: skip
# How often each method is drawn: mostly the scoring path, where the input is richest.
_WEIGHTS = (40, 12, 12, 20, 6, 6, 2, 8, 2)
# A batch's size: mostly small, sometimes one past the server's default limit
# (connections.batch_max_transactions, 64), which is refused whole.
_BATCH_SIZES = (0, 1, 2, 3, 5, 8, 65)
_BATCH_SIZE_WEIGHTS = (1, 4, 4, 3, 3, 3, 1)
# Status codes the contract (proto/fraud/v1/*.proto, README) documents per method; every
# method may also be refused for want of an identity or role, or be shed.
_ANY = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"})
_SCORING = _ANY | {"OK", "ALREADY_EXISTS", "DEADLINE_EXCEEDED", "UNAVAILABLE"}
DOCUMENTED: dict[str, frozenset[str]] = {
    SCORE: _SCORING,
    SCORE_STREAM: _SCORING,
    SCORE_BATCH: _SCORING,
    REPORT_OUTCOME: _ANY | {"OK", "NOT_FOUND", "UNAVAILABLE", "DEADLINE_EXCEEDED"},
    GET_MODEL_INFO: _ANY | {"OK", "UNAVAILABLE"},
    LIST_MODELS: _ANY | {"OK", "UNIMPLEMENTED"},
    RELOAD: _ANY | {"OK", "UNIMPLEMENTED"},
    HEALTH: _ANY | {"OK", "NOT_FOUND"},  # grpc.health.v1: NOT_FOUND for an unknown service
    UNKNOWN_METHOD: frozenset({"UNIMPLEMENTED"}),
}
_CARD_NUMBER = "4111111111111111"  # a test PAN: passes the Luhn check
_STRINGS = (
    "", " ", "x" * 129, "x" * 5000, "é" * 64, "\x00", "\u202e", "null", "-1", _CARD_NUMBER,
    "4111 1111 1111 1111", "%B4111111111111111^DOE/J^2512", ";4111111111111111=2512?", "k1:00",
    "💳" * 40, "../../etc/passwd", "${jndi:x}",
)  # fmt: skip
_CURRENCIES = ("EUR", "USD", "GBP", "eur", "", "XXX", "EURO", "€", "123")
_INT64 = (0, 1, -1, 2**63 - 1, -(2**63), 10**11, 10**11 + 1, 4111111111111111)


@dataclass(frozen=True)
class FuzzCase:
    """One call: the method's path, its request messages (one, or a stream's), metadata."""

    method: str
    payloads: tuple[bytes, ...]
    metadata: tuple[tuple[str, str], ...]
    mutated: bool


class CaseMaker:
    """Draws cases; `run_id` prefixes the transaction ids it makes up, `admin_token` is the
    server's (sent right, wrong or not at all)."""

    def __init__(self, seed: int, run_id: str, admin_token: str) -> None:
        self._random = random.Random(seed)
        self._run_id = run_id
        self._admin_token = admin_token
        self._count = 0
        self._scored: list[str] = []

    def case(self) -> FuzzCase:
        method = self._random.choices(METHODS, _WEIGHTS)[0]
        count = self._random.randint(1, 6) if method == SCORE_STREAM else 1
        valid = [self._valid(method) for _ in range(count)]
        mutate = self._random.random() < 0.35
        payloads = tuple(self._mutated(p) if mutate else self._hostile(method, p) for p in valid)
        return FuzzCase(method, payloads, self._metadata(method), mutate)

    def _valid(self, method: str) -> bytes:
        if method in (SCORE, SCORE_STREAM):
            return self._score_request(hostile=False).SerializeToString()
        if method == SCORE_BATCH:
            return self._batch_request(hostile=False).SerializeToString()
        if method == REPORT_OUTCOME:
            return self._outcome_request(hostile=False).SerializeToString()
        if method == HEALTH:
            names = ("", "fraud.v1.FraudScoring", "liveness")
            return health_pb2.HealthCheckRequest(
                service=self._random.choice(names)
            ).SerializeToString()
        if method in (LIST_MODELS, RELOAD):
            return admin_pb2.ListModelsRequest().SerializeToString()
        return scoring_pb2.GetModelInfoRequest().SerializeToString()

    def _hostile(self, method: str, valid: bytes) -> bytes:
        """Half the time the valid message; otherwise one whose fields are hostile."""
        if self._random.random() < 0.5:
            return valid
        if method in (SCORE, SCORE_STREAM):
            return self._score_request(hostile=True).SerializeToString()
        if method == SCORE_BATCH:
            return self._batch_request(hostile=True).SerializeToString()
        if method == REPORT_OUTCOME:
            return self._outcome_request(hostile=True).SerializeToString()
        if method == HEALTH:
            return health_pb2.HealthCheckRequest(service=self._string()).SerializeToString()
        return valid + self._unknown_field()

    def _score_request(self, *, hostile: bool) -> scoring_pb2.ScoreRequest:
        draw = self._random
        self._count += 1
        transaction_id = f"{self._run_id}-{self._count}"
        if hostile and draw.random() < 0.1 and self._scored:
            transaction_id = draw.choice(self._scored)  # a retry, or the same id reused
        transaction = scoring_pb2.Transaction(
            transaction_id=transaction_id,
            card_id=f"card{draw.randrange(500)}",
            terminal_id=f"term{draw.randrange(800)}",
            merchant_id=f"merch{draw.randrange(200)}",
            amount_minor=draw.randrange(1, 50_000),
            currency="EUR",
            mcc=draw.choice((0, 5411, 5999, 7995)),
            entry_mode=draw.randrange(6),  # type: ignore[arg-type]
            country=draw.choice(("FR", "GB", "", "DE")),
        )
        transaction.timestamp.FromSeconds(1_525_000_000 + draw.randrange(86_400 * 30))
        if draw.random() < 0.5:
            transaction.card_present = draw.random() < 0.5
        if hostile:
            self._spoil_transaction(transaction)
        self._scored.append(transaction.transaction_id)
        del self._scored[:-1000]
        return scoring_pb2.ScoreRequest(transaction=transaction)

    def _batch_request(self, *, hostile: bool) -> scoring_pb2.ScoreBatchRequest:
        """A batch of valid transactions, or, when `hostile`, some of them hostile (a
        repeated id among them at times: the same transaction again, or another reusing it)."""
        size = self._random.choices(_BATCH_SIZES, _BATCH_SIZE_WEIGHTS)[0]
        transactions = [
            self._score_request(hostile=hostile and self._random.random() < 0.5)
            for _ in range(size)
        ]
        return scoring_pb2.ScoreBatchRequest(transactions=transactions)

    def _spoil_transaction(self, transaction: scoring_pb2.Transaction) -> None:
        draw = self._random
        for _ in range(draw.randint(1, 3)):
            spoil = draw.randrange(9)
            if spoil == 0:
                setattr(transaction, draw.choice(_ID_FIELDS), self._string())
            elif spoil == 1:
                transaction.amount_minor = draw.choice(_INT64)
            elif spoil == 2:
                transaction.currency = draw.choice(_CURRENCIES)
            elif spoil == 3:
                transaction.timestamp.seconds = draw.choice((*_INT64, 253402300800, -62135596801))
            elif spoil == 4:
                transaction.timestamp.nanos = draw.choice((-1, 10**9, 2**31 - 1, 999_999_999))
            elif spoil == 5:
                transaction.mcc = draw.choice((10_000, 2**32 - 1, 9999))
            elif spoil == 6:
                transaction.entry_mode = draw.choice((-1, 6, 99, 2**31 - 1))  # type: ignore[assignment]
            elif spoil == 7:
                transaction.country = draw.choice(("", "F", "FRA", "fr", "1", "ÉÉ"))
            else:
                transaction.ClearField(draw.choice(_REQUIRED_FIELDS))  # type: ignore[arg-type]

    def _outcome_request(self, *, hostile: bool) -> scoring_pb2.OutcomeRequest:
        draw = self._random
        known = self._scored and draw.random() < 0.7
        transaction_id = (
            draw.choice(self._scored)
            if known
            else f"{self._run_id}-unknown-{draw.randrange(10**6)}"
        )
        outcome = scoring_pb2.OutcomeRequest(
            transaction_id=transaction_id, is_fraud=draw.random() < 0.5
        )
        outcome.reported_at.FromSeconds(1_525_000_000 + draw.randrange(86_400 * 60))
        if hostile:
            spoil = draw.randrange(4)
            if spoil == 0:
                outcome.transaction_id = self._string()
            elif spoil == 1:
                outcome.reported_at.seconds = draw.choice((*_INT64, 253402300800))
            elif spoil == 2:
                outcome.reported_at.nanos = draw.choice((-1, 10**9))
            else:
                outcome.ClearField("reported_at")
        return outcome

    def _mutated(self, valid: bytes) -> bytes:
        """`valid` with bytes flipped, cut, inserted or repeated, or random bytes."""
        draw = self._random
        data = bytearray(valid)
        for _ in range(draw.randint(1, 4)):
            kind = draw.randrange(6)
            at = draw.randrange(len(data) + 1)
            if kind == 0 and data:
                data[min(at, len(data) - 1)] ^= 1 << draw.randrange(8)
            elif kind == 1:
                del data[at:]
            elif kind == 2:
                data[at:at] = draw.randbytes(draw.randint(1, 8))
            elif kind == 3 and data:
                piece = data[at : at + draw.randint(1, 16)]
                data[at:at] = piece * draw.randint(1, 4)
            elif kind == 4:
                data = bytearray(draw.randbytes(draw.randint(0, 64)))
            else:
                data[at:at] = self._unknown_field()
        return bytes(data)

    def _unknown_field(self) -> bytes:
        """A field of a number no message of the contract uses, varint or length-delimited."""
        number = self._random.choice((15, 99, 2**20))
        if self._random.random() < 0.5:
            return _varint(number << 3) + _varint(self._random.randrange(2**63))
        body = self._random.randbytes(self._random.randint(0, 40))
        return _varint(number << 3 | 2) + _varint(len(body)) + body

    def _string(self) -> str:
        if self._random.random() < 0.7:
            return self._random.choice(_STRINGS)
        return "".join(
            chr(self._random.randrange(1, 0x2FF)) for _ in range(self._random.randint(0, 40))
        )

    def _metadata(self, method: str) -> tuple[tuple[str, str], ...]:
        if method not in (LIST_MODELS, RELOAD):
            return ()
        choice = self._random.randrange(4)
        if choice == 0:
            return ()
        if choice == 1:
            return (("authorization", "Bearer wrong-token"),)
        if choice == 2:
            return (("authorization", self._random.choice(("Bearer", "Basic x", "bearer  ", ""))),)
        return (("authorization", f"Bearer {self._admin_token}"),)


_ID_FIELDS = ("transaction_id", "card_id", "terminal_id", "merchant_id")
_REQUIRED_FIELDS = ("transaction_id", "card_id", "terminal_id", "currency", "timestamp")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
