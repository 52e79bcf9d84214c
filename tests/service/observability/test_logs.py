"""Log configuration: JSON lines with context, libraries routed, card numbers redacted, sampling."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import structlog
from structlog.testing import capture_logs
from structlog.typing import EventDict

from service.app import build_scorer
from service.config.settings import LoggingSettings, ServerSettings, ServeSettings
from service.features import FeatureEngine
from service.grpc_api._proto.fraud.v1 import scoring_pb2_grpc
from service.grpc_api.client import build_score_request
from service.grpc_api.servicer import MAX_REQUEST_ID_LENGTH, REQUEST_ID_KEY
from service.model.registry import Registry
from service.model.store import ModelStore
from service.observability.logs import (
    REDACTED,
    RequestLogSampler,
    configure_logging,
    new_request_id,
)
from tests.conftest import TrainedModel
from tests.service.loopback import LoopbackServer

# Luhn-valid test numbers (Visa and American Express test ranges).
VISA = "4111111111111111"
AMEX = "378282246310005"
NOT_LUHN = "4111111111111112"
CALL_TIMEOUT = 10.0
GENERATED_ID = re.compile(r"[0-9a-f]{16}")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Each test configures logging afresh; the global state is put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def log_lines(**settings: Any) -> tuple[io.StringIO, structlog.typing.FilteringBoundLogger]:
    stream = io.StringIO()
    configure_logging(LoggingSettings(**settings), stream=stream)
    return stream, structlog.get_logger()


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_carries_bound_context() -> None:
    """A JSON line parses and holds the bound context, level, ISO timestamp and fields."""
    stream, log = log_lines(format="json")
    structlog.contextvars.bind_contextvars(request_id="req-1", model_version="v7")
    log.info("scored", latency_ms=1.25)
    (line,) = parsed(stream)
    assert line["event"] == "scored"
    assert (line["request_id"], line["model_version"]) == ("req-1", "v7")
    assert (line["level"], line["latency_ms"]) == ("info", 1.25)
    assert datetime.fromisoformat(line["timestamp"]).utcoffset() is not None


def test_standard_library_logs_share_the_format() -> None:
    """A `logging` record (grpc's, say) becomes a JSON line with its logger name and context."""
    stream, _ = log_lines(format="json")
    structlog.contextvars.bind_contextvars(request_id="req-2")
    logging.getLogger("grpc._server").warning("slow handler %s", "Score")
    (line,) = parsed(stream)
    assert line["event"] == "slow handler Score"
    assert (line["logger"], line["level"], line["request_id"]) == (
        "grpc._server",
        "warning",
        "req-2",
    )


def test_level_filters_both_paths() -> None:
    """Below the configured level, neither structlog nor `logging` calls write anything."""
    stream, log = log_lines(format="json", level="warning")
    log.info("quiet")
    logging.getLogger("grpc").info("quiet too")
    log.warning("loud")
    logging.getLogger("grpc").error("loud too")
    assert [line["event"] for line in parsed(stream)] == ["loud", "loud too"]


def test_auto_format_is_json_off_a_terminal() -> None:
    """`auto` renders JSON when the stream is not a terminal (a file, a pipe, a container)."""
    stream, log = log_lines(format="auto")
    log.info("scored", decision="APPROVE")
    assert parsed(stream)[0]["decision"] == "APPROVE"


def test_auto_format_is_console_on_a_terminal() -> None:
    """`auto` renders readable key=value lines when the stream is a terminal."""
    controller, terminal_fd = os.openpty()
    with os.fdopen(terminal_fd, "w", encoding="utf-8") as terminal:
        configure_logging(LoggingSettings(format="auto"), stream=terminal)
        structlog.get_logger().info("scored", decision="APPROVE")
        output = os.read(controller, 4096).decode()
    os.close(controller)
    assert "scored" in output
    assert "decision" in output
    assert not output.lstrip().startswith("{")


def test_configuring_again_replaces_the_handler() -> None:
    """A second configuration writes each library line once, to the new stream only."""
    first, _ = log_lines(format="json")
    second, _ = log_lines(format="json")
    logging.getLogger("grpc").warning("once")
    assert first.getvalue() == ""
    assert [line["event"] for line in parsed(second)] == ["once"]


class CardHolder:
    """An object whose repr shows a card number, as a careless dataclass would."""

    def __repr__(self) -> str:
        return f"CardHolder(card_id='{VISA}')"


@pytest.mark.parametrize(
    ("event", "fields"),
    [
        (f"declined card {VISA}", {}),
        ("scored", {"card_id": VISA}),
        ("scored", {"card_id": "4111 1111 1111 1111"}),
        ("scored", {"card_id": "4111-1111-1111-1111"}),
        ("scored", {"request_id": "4111.1111.1111.1111"}),
        ("scored", {"request_id": f"%B{VISA}^CARDHOLDER/TEST^2512101000000123456?"}),
        ("scored", {"request_id": f";{VISA}=25121010000012345678?"}),
        ("scored", {"request_id": f"T{VISA}"}),
        ("scored", {"card_id": AMEX}),
        ("scored", {"card_id": int(VISA)}),
        ("scored", {"request": {"card": [f"pan={VISA};"]}}),
        ("scored", {"request": CardHolder()}),
    ],
)
def test_card_numbers_are_redacted_everywhere(event: str, fields: dict[str, Any]) -> None:
    """A Luhn-valid number in the message, a field, a nested value or a repr never gets out."""
    stream, log = log_lines(format="json")
    log.info(event, **fields)
    output = stream.getvalue()
    assert VISA not in output.replace(" ", "").replace("-", "").replace(".", "")
    assert AMEX not in output
    assert REDACTED in output


def test_card_numbers_are_redacted_from_tracebacks_and_library_logs() -> None:
    """Exception text and `logging` arguments are scrubbed too, in console format as well."""
    stream, log = log_lines(format="console")
    try:
        raise ValueError(f"unparsable card {VISA}")
    except ValueError:
        log.exception("failed")
        logging.getLogger("grpc").exception("library saw %s", VISA)
    output = stream.getvalue()
    assert VISA not in output
    assert output.count(REDACTED) == 3
    assert "ValueError: unparsable card" in output


def test_numbers_that_are_not_card_numbers_are_kept() -> None:
    """Numbers failing Luhn, or too short, or part of a longer digit run, stay readable."""
    stream, log = log_lines(format="json")
    long_run = "9" * 5 + VISA
    log.info("scored", near_miss=NOT_LUHN, short="4111111111", long_run=long_run, amount=12345)
    (line,) = parsed(stream)
    assert (line["near_miss"], line["short"]) == (NOT_LUHN, "4111111111")
    assert (line["long_run"], line["amount"]) == (long_run, 12345)


def test_sampler_rate_zero_never_logs() -> None:
    """Rate 0 selects no request."""
    sampler = RequestLogSampler(0.0, seed=1)
    assert not any(sampler.should_log() for _ in range(10_000))


def test_sampler_rate_one_always_logs() -> None:
    """Rate 1 selects every request."""
    sampler = RequestLogSampler(1.0, seed=1)
    assert all(sampler.should_log() for _ in range(10_000))


def test_sampler_selects_about_the_rate() -> None:
    """Rate 0.1 selects about 10% of 10,000 requests (within 3.3 standard deviations)."""
    sampler = RequestLogSampler(0.1, seed=1)
    selected = sum(sampler.should_log() for _ in range(10_000))
    assert 900 <= selected <= 1100


def test_sampler_refuses_a_rate_outside_zero_to_one() -> None:
    """Rates below 0, above 1 or NaN are programming errors."""
    for rate in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match="sample rate"):
            RequestLogSampler(rate)


def test_new_request_ids_are_16_hex_digits_and_differ() -> None:
    """Generated ids have a fixed, log-friendly form and do not repeat."""
    ids = {new_request_id() for _ in range(1_000)}
    assert len(ids) == 1_000
    assert all(GENERATED_ID.fullmatch(request_id) for request_id in ids)


@pytest.fixture(scope="module")
def logging_server(trained_model: TrainedModel) -> Iterator[LoopbackServer]:
    """A real server of the trained champion that logs every request."""
    champion = Registry(trained_model.registry).champion()
    assert champion is not None
    feature_config = champion[1].feature_config
    store = ModelStore(trained_model.registry, feature_config=feature_config)
    store.load_champion()
    settings = ServeSettings(
        server=ServerSettings(host="127.0.0.1", port=0), logging=LoggingSettings(sample_rate=1.0)
    )
    server = LoopbackServer(settings, build_scorer(settings, FeatureEngine(feature_config), store))
    yield server
    server.stop()


def _score(target: str, transaction_id: str, amount_minor: int, *metadata: tuple[str, str]) -> None:
    when = datetime.now(UTC) - timedelta(hours=1)
    request = build_score_request(transaction_id, "card-1", "term-1", amount_minor, "EUR", when)
    stub = scoring_pb2_grpc.FraudScoringStub(grpc.insecure_channel(target))
    stub.Score(request, metadata=metadata, timeout=CALL_TIMEOUT)


def _captured() -> AbstractContextManager[list[EventDict]]:
    """Capture log events with the context variables bound when each was logged."""
    return capture_logs(processors=[structlog.contextvars.merge_contextvars])


def test_a_logged_request_carries_its_request_id_and_model_version(
    logging_server: LoopbackServer, trained_model: TrainedModel
) -> None:
    """The scored line binds the caller's x-request-id, cut to length, or a new id, and
    the model version."""
    long_id = "r" * (MAX_REQUEST_ID_LENGTH + 50)
    target = logging_server.target
    with _captured() as entries:
        _score(target, "tx-given", 100, (REQUEST_ID_KEY, "req-from-the-caller"))
        _score(target, "tx-long", 100, (REQUEST_ID_KEY, long_id))
        _score(target, "tx-none", 100)
    scored = {entry["transaction_id"]: entry for entry in entries if entry["event"] == "scored"}
    assert scored["tx-given"]["request_id"] == "req-from-the-caller"
    assert scored["tx-long"]["request_id"] == long_id[:MAX_REQUEST_ID_LENGTH]
    assert GENERATED_ID.fullmatch(scored["tx-none"]["request_id"])
    assert {entry["model_version"] for entry in scored.values()} == {trained_model.version}


def test_every_line_of_one_stream_carries_the_same_generated_request_id(
    logging_server: LoopbackServer,
) -> None:
    """A ScoreStream without x-request-id gets one id for the call, not one per line."""
    when = datetime.now(UTC) - timedelta(hours=1)
    requests = [
        build_score_request(f"tx-stream-{n}", "card-1", "term-1", 100, "EUR", when)
        for n in range(3)
    ]
    stub = scoring_pb2_grpc.FraudScoringStub(grpc.insecure_channel(logging_server.target))
    with _captured() as entries:
        list(stub.ScoreStream(iter(requests), timeout=CALL_TIMEOUT))
    ids = [entry["request_id"] for entry in entries if entry["event"] == "scored"]
    assert len(ids) == 3
    assert len(set(ids)) == 1
    assert GENERATED_ID.fullmatch(ids[0])


def test_a_refused_request_logs_its_request_id(logging_server: LoopbackServer) -> None:
    """An invalid request's "refused" line names the field and carries the request id."""
    with _captured() as entries, pytest.raises(grpc.RpcError):
        _score(logging_server.target, "tx-bad", -1, (REQUEST_ID_KEY, "req-refused"))
    (refused,) = [entry for entry in entries if entry["event"] == "refused"]
    assert (refused["request_id"], refused["code"]) == ("req-refused", "INVALID_ARGUMENT")
    assert refused["field"] == "transaction.amount_minor"
