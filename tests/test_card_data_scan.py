"""No card number anywhere: 2,500 requests carrying card numbers in every field and every
common form (plain, spaced, dashed, dotted, track 1, track 2) against a real `fraud-serve`
process, then a search of everything it wrote or said for them: its standard output and
standard error, every decision and outcome record file, /metrics, every status detail and
the feature state's LMDB files. None is found.

So that a search finding nothing means something, a control card number is planted in each
of those sinks after the run, written as that sink's own writer writes (the real decision
and outcome writers, the real state store, prometheus_client's exposition format, a JSON
log line, a status detail as the server wrote them before issue 15): the search must find
every control, and nothing else.

Card numbers in `card_id` are answered (tokenised, track data reduced to its PAN); anywhere
else, in Score, ScoreStream or ReportOutcome, they are INVALID_ARGUMENT naming the field.
The caller's `x-request-id`, logged with every sampled line, carries card numbers too.
"""

from __future__ import annotations

import json
import random
import re
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter

from service.app import champion_feature_config
from service.config.settings import StateSettings
from service.core.card_tokens import CardTokenizer
from service.core.domain import Decision, DecisionSource, ScoreResult, Transaction
from service.features import EntityKind
from service.features.card_history import new_card_record
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.grpc_api.client import build_outcome_request, build_score_request
from service.records.decision_writer import DecisionLogWriter
from service.records.outcome_writer import OutcomeLogWriter
from service.state.opening import open_state
from tests.clocked_server import ClockedServer
from tests.conftest import TrainedModel
from tests.server_process import server_files

CARD_TOKEN_KEY = "the key of the card data scan"
CALL_TIMEOUT = 30.0
WAVE = 64  # unary calls in flight at once, within the calls a connection may hold
STATE_BYTES = 64 << 20  # the least the settings allow: the whole file is searched
# Every field in every form many times over: a leak is a path, not a rate (the server
# logs every request). 10,000 found nothing more, and took 23 s to send on a busy 2-core
# box against 6 s for these.
REQUESTS = 2_500
CARD_ID_REQUESTS = 1_050
STREAM_BATCH = 350  # card_id swipes a stream
STREAM_STOPPERS = 100  # streams ended by a card number in their second transaction
OUTCOME_REQUESTS = 150

FORMS: dict[str, Callable[[str], str]] = {
    "plain": lambda pan: pan,
    "spaced": lambda pan: " ".join(pan[i : i + 4] for i in range(0, len(pan), 4)),
    "dashed": lambda pan: "-".join(pan[i : i + 4] for i in range(0, len(pan), 4)),
    "dotted": lambda pan: ".".join(pan[i : i + 4] for i in range(0, len(pan), 4)),
    "track-1": lambda pan: f"%B{pan}^CARDHOLDER/TEST^2512101000000123456?",
    "track-2": lambda pan: f";{pan}=25121010000012345678?",
}
# Where a card number is refused, and the field the refusal names.
REFUSING_FIELDS = {
    "transaction_id": "transaction.transaction_id",
    "terminal_id": "transaction.terminal_id",
    "merchant_id": "transaction.merchant_id",
    "currency": "transaction.currency",
    "country": "transaction.country",
}
# Candidate digit runs for the search: digit groups joined by any one character that is not
# a letter or digit, so that no separator, quote or escape hides a number.
_DIGIT_RUN = re.compile(r"[0-9]+(?:[^0-9A-Za-z][0-9]+)*")
_NOT_DIGIT = re.compile(r"[^0-9]")
Metadata = tuple[tuple[str, str], ...]


def _luhn_completed(body: str) -> str:
    total = 0
    for position, digit in enumerate(reversed(body + "0")):
        value = int(digit) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return body + str(-total % 10)


def card_numbers(count: int, seed: int) -> list[str]:
    """`count` distinct Luhn-valid card numbers of 13 to 19 digits, most of 16."""
    draw = random.Random(seed)
    numbers: set[str] = set()
    while len(numbers) < count:
        length = draw.choice((16, 16, 16, 15, 13, 19))
        prefix = draw.choice(("4", "51", "37", "6011", "35"))
        body = prefix + "".join(draw.choices("0123456789", k=length - len(prefix) - 1))
        numbers.add(_luhn_completed(body))
    return sorted(numbers)


def found_in(text: str, numbers: set[str]) -> set[str]:
    """Which of `numbers` appear in `text`, in whatever form: every stretch of 13 to 19
    digits of every digit run, separators dropped, is looked up."""
    found = set()
    for run in _DIGIT_RUN.finditer(text):
        digits = _NOT_DIGIT.sub("", run.group())
        for length in range(13, min(19, len(digits)) + 1):
            for start in range(len(digits) - length + 1):
                if digits[start : start + length] in numbers:
                    found.add(digits[start : start + length])
    return found


@dataclass(frozen=True)
class Refusal:
    """A call that carried a card number outside card_id, and how it ended."""

    expected_field: str
    code: grpc.StatusCode
    details: str
    debug: str


@pytest.fixture
def server(trained_model: TrainedModel, tmp_path: Path) -> Iterator[ClockedServer]:
    started = ClockedServer(
        tmp_path / "server",
        "--registry", str(trained_model.registry), "--host", "127.0.0.1",
        "--port", "0", "--metrics-port", "0",
        environment={
            **server_files(tmp_path),
            "FRAUD_STATE__MAX_BYTES": str(STATE_BYTES),
            "FRAUD_LOGGING__SAMPLE_RATE": "1",  # every request's line: the most to leak
            "FRAUD_CARD_TOKEN_KEY": CARD_TOKEN_KEY,
        },
    )  # fmt: skip
    yield started
    started.kill()


def _swipe(
    transaction_id: str, card_id: str, when: datetime, changes: dict[str, str] | None = None
) -> scoring_pb2.ScoreRequest:
    """A swipe of `card_id`, its transaction's string fields replaced by `changes`."""
    request = build_score_request(
        transaction_id, card_id, "term-1", 1_250, "EUR", when, merchant_id="merchant-1",
        country="FR",
    )  # fmt: skip
    for name, value in (changes or {}).items():
        setattr(request.transaction, name, value)
    return request


def _request_id(request: scoring_pb2.ScoreRequest | scoring_pb2.OutcomeRequest) -> Metadata:
    """An `x-request-id` that is the card number the request carries, as it carries it."""
    if isinstance(request, scoring_pb2.OutcomeRequest):
        return (("x-request-id", request.transaction_id),)
    tx = request.transaction
    carried = next(
        text
        for text in (tx.transaction_id, tx.terminal_id, tx.merchant_id, tx.currency, tx.country)
        if sum(character.isdigit() for character in text) >= 13
    )
    return (("x-request-id", carried),)


def _ended(future: Future[object], expected_field: str) -> Refusal:
    error = future.exception()
    assert isinstance(error, grpc.RpcError), f"{expected_field}: answered, not refused"
    call: grpc.Call = error  # type: ignore[assignment]
    return Refusal(expected_field, call.code(), call.details() or "", str(error))


def test_no_card_number_reaches_any_sink(
    server: ClockedServer, trained_model: TrainedModel, tmp_path: Path
) -> None:
    """2,500 card numbers sent in every field and form: 0 found in stdout, stderr, the
    record files, /metrics, the status details or the state store; each sink's planted
    control found."""
    pans = card_numbers(REQUESTS, seed=15)
    forms = list(FORMS.values())
    form_of = {pan: forms[index % len(forms)] for index, pan in enumerate(pans)}
    serving = server.wait_for("serving")
    channel = grpc.insecure_channel(f"127.0.0.1:{serving['port']}")
    stub = scoring_pb2_grpc.FraudScoringStub(channel)
    when = datetime.now(UTC) - timedelta(minutes=1)
    sent = iter(pans)

    # In card_id, on streams: every one answered.
    carded = {f"carded-{index}": next(sent) for index in range(CARD_ID_REQUESTS)}
    answered: list[str] = []
    batches = [
        list(carded.items())[start : start + STREAM_BATCH]
        for start in range(0, CARD_ID_REQUESTS, STREAM_BATCH)
    ]
    for batch in batches:
        requests = (_swipe(tx_id, form_of[pan](pan), when) for tx_id, pan in batch)
        request_id = form_of[batch[0][1]](batch[0][1])
        responses = stub.ScoreStream(
            requests, timeout=CALL_TIMEOUT, metadata=(("x-request-id", request_id),)
        )
        answered += [response.transaction_id for response in responses]
    for number, transaction_id in enumerate(answered[:300]):
        stub.ReportOutcome(
            build_outcome_request(transaction_id, number % 2 == 0, datetime.now(UTC))
        )

    # Anywhere else, unary: every one refused, naming the field.
    # Each call as (method, request, the field its refusal names), started a wave at a time.
    calls: list[tuple[Any, Any, str]] = []
    fields = list(REFUSING_FIELDS)
    scored_elsewhere = REQUESTS - CARD_ID_REQUESTS - STREAM_STOPPERS - OUTCOME_REQUESTS
    for number, pan in enumerate([next(sent) for _ in range(scored_elsewhere)]):
        field = fields[number % len(fields)]
        request = _swipe(f"refused-{number}", "card-1", when, {field: form_of[pan](pan)})
        calls.append((stub.Score, request, REFUSING_FIELDS[field]))
    for pan in (next(sent) for _ in range(OUTCOME_REQUESTS)):
        outcome = build_outcome_request(form_of[pan](pan), True, datetime.now(UTC))
        calls.append((stub.ReportOutcome, outcome, "transaction_id"))
    refusals: list[Refusal] = []
    for start in range(0, len(calls), WAVE):
        started = [
            (method.future(request, timeout=CALL_TIMEOUT, metadata=_request_id(request)), field)
            for method, request, field in calls[start : start + WAVE]
        ]
        refusals += [_ended(future, field) for future, field in started]

    # Second on a stream, after a good transaction: the stream ends naming its position.
    for number in range(STREAM_STOPPERS):
        pan = next(sent)
        field = fields[number % len(fields)]
        good = _swipe(f"stream-good-{number}", "card-2", when)
        bad = _swipe(f"stream-bad-{number}", "card-2", when, {field: form_of[pan](pan)})
        responses = stub.ScoreStream(iter([good, bad]), timeout=CALL_TIMEOUT)
        with pytest.raises(grpc.RpcError) as ended:
            for _response in responses:
                pass
        call: grpc.Call = ended.value  # type: ignore[assignment]
        refusals.append(
            Refusal(
                f"transaction #1: {REFUSING_FIELDS[field]}",
                call.code(),
                call.details() or "",
                str(ended.value),
            )
        )
    assert next(sent, None) is None  # all 2,500 sent

    metrics = _scrape(serving["metrics_port"])
    channel.close()
    assert server.stop() == 0

    assert sorted(answered) == sorted(carded)
    assert len(refusals) == REQUESTS - CARD_ID_REQUESTS
    for refusal in refusals:
        assert refusal.code is grpc.StatusCode.INVALID_ARGUMENT, refusal
        assert refusal.details.startswith(refusal.expected_field + ": "), refusal
    _assert_card_ids_became_their_tokens(tmp_path / "decisions", carded)

    details = [text for refusal in refusals for text in (refusal.details, refusal.debug)]
    controls = _plant_controls(tmp_path, trained_model, server)
    # The sinks held in memory get theirs here: a metric labelled with a card number, as
    # prometheus_client would expose it, and a detail naming a stream's transaction by id.
    registry = CollectorRegistry()
    Counter("control", "A control.", ["card"], registry=registry).labels(
        FORMS["dashed"](controls["metrics"])
    ).inc()
    metrics += prometheus_client.generate_latest(registry).decode()
    details.append(f"transaction #1 ({controls['status details']!r}): transaction.mcc: ...")

    sinks = {
        "stdout": server.stdout_path.read_text(errors="replace"),
        "stderr": server.stderr_path.read_text(errors="replace"),
        "decisions": _files_text(tmp_path / "decisions"),
        "outcomes": _files_text(tmp_path / "outcomes"),
        "metrics": metrics,
        "status details": "\n".join(details),
        "state": _files_text(tmp_path / "state"),
    }
    assert not set(controls.values()) & set(pans)
    searched = set(pans) | set(controls.values())
    found = {sink: found_in(text, searched) for sink, text in sinks.items()}
    assert found == {sink: {controls[sink]} for sink in sinks}


def _plant_controls(
    tmp_path: Path, trained_model: TrainedModel, server: ClockedServer
) -> dict[str, str]:
    """A control card number written into each sink on disk, by its own writer where the
    server has one; the control of every sink, by sink."""
    sinks = ("stdout", "stderr", "decisions", "outcomes", "metrics", "status details", "state")
    controls = dict(zip(sinks, card_numbers(len(sinks), seed=1015), strict=True))
    with server.stdout_path.open("a") as stdout:
        line = {"event": "control", "card": FORMS["dotted"](controls["stdout"])}
        stdout.write(json.dumps(line) + "\n")
    with server.stderr_path.open("a") as stderr:
        stderr.write(f"E0000 control {FORMS['spaced'](controls['stderr'])}\n")

    feature_config = champion_feature_config(trained_model.registry)
    decisions = DecisionLogWriter(tmp_path / "decisions", feature_config=feature_config)
    tx = Transaction("control", 1.7e9, "card-1", FORMS["track-2"](controls["decisions"]), 12.5)
    answer = ScoreResult("control", 0.5, Decision.REVIEW, (), "v", DecisionSource.MODEL, None)
    decisions.on_answer(tx, None, answer, None)
    decisions.close()
    outcomes = OutcomeLogWriter(tmp_path / "outcomes")
    outcomes.record(FORMS["track-1"](controls["outcomes"]), True, 1.7e9)
    outcomes.close()

    state = open_state(
        StateSettings(backend="lmdb", path=tmp_path / "state", max_bytes=STATE_BYTES),
        feature_config,
    )
    with state.session() as session:
        session.put_entity(EntityKind.CARD, controls["state"], new_card_record())
    state.close()
    return controls


def _assert_card_ids_became_their_tokens(directory: Path, carded: dict[str, str]) -> None:
    """Each card_id answered is in the decision log as the token of its card number, track
    data and grouping notwithstanding."""
    tokenizer = CardTokenizer(CARD_TOKEN_KEY.encode())
    cards = {
        line["transaction_id"]: line["card"]
        for segment in directory.iterdir()
        for line in map(json.loads, segment.read_text().splitlines())
    }
    assert {tx_id: cards[tx_id] for tx_id in carded} == {
        tx_id: tokenizer.token(pan) for tx_id, pan in carded.items()
    }


def _files_text(directory: Path) -> str:
    """Every file under `directory`, bytes as Latin-1 characters (LMDB's are binary)."""
    return "\n".join(
        path.read_bytes().decode("latin-1")
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    )


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=CALL_TIMEOUT) as page:
        text: str = page.read().decode()
    return text
