"""Structured logs: structlog and the standard library (grpc's logs) through one format.

`configure_logging` is called once, by the composition root. Every line, ours or a
library's, passes the same processors: context variables bound for the request (request id,
model version) first, then level, ISO timestamp, traceback, card-number redaction, and a JSON
or console renderer. structlog's own loggers write straight to the stream (no `logging`
machinery on the hot path) and are cached on first use; calls below the level return at once.

Request ids: a logged request's line carries the caller's `x-request-id` or, without one, a
`new_request_id()`, bound with the model version through context variables. Only requests
in the log sample pay for either: an unsampled request costs one random draw.

Card numbers never belong in a log line: the scoring path logs none, and `redact_card_numbers`
is the defence in depth that replaces anything that may be one (a run of digit groups,
joined by spaces, dashes or dots, holding 13-19 digits that pass the Luhn check, whatever
surrounds it: `service.core.card_data.replace_card_numbers`), wherever it sits in an event,
tracebacks included.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from service.config.settings import LoggingSettings
from service.core.card_data import replace_card_numbers

REDACTED = "[REDACTED]"
# Values rendered as they are; anything else is rendered by its repr, so that is scrubbed.
_PLAIN_TYPES = (bool, float, type(None))
REQUEST_ID_BYTES = 8


def new_request_id() -> str:
    """A random request id, 16 hex digits: unique enough to find one request's lines."""
    return os.urandom(REQUEST_ID_BYTES).hex()


class RequestLogSampler:
    """Decides whether a request gets its log line: cheap enough to ask on every request.

    Random rather than every n-th request, so periodic traffic cannot hide from the sample.
    """

    __slots__ = ("_draw", "rate")

    def __init__(self, rate: float, seed: int | None = None) -> None:
        """Log a share `rate` (0 to 1) of requests; `seed` makes the choice reproducible."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sample rate must be between 0 and 1, got {rate}")
        self.rate = rate
        self._draw = random.Random(seed).random

    def should_log(self) -> bool:
        """Whether this request is in the sample (random() < 0 never holds, < 1 always)."""
        return self._draw() < self.rate


def configure_logging(settings: LoggingSettings, *, stream: TextIO | None = None) -> None:
    """Send structlog's and the standard library's logs to `stream` (stdout by default)."""
    out = sys.stdout if stream is None else stream
    level = logging.getLevelNamesMapping()[settings.level]
    renderer = _renderer(settings, out)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            redact_card_numbers,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    _route_standard_logging(out, level, timestamper, renderer)


def _renderer(settings: LoggingSettings, stream: TextIO) -> Processor:
    terminal = stream.isatty()
    if settings.format == "json" or (settings.format == "auto" and not terminal):
        return structlog.processors.JSONRenderer()
    return structlog.dev.ConsoleRenderer(colors=terminal)


def _route_standard_logging(
    stream: TextIO, level: int, timestamper: Processor, renderer: Processor
) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            timestamper,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_card_numbers,
            renderer,
        ],
    )
    handler = _StructlogHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    # Configuring again replaces our handler; handlers others installed (pytest's) stay.
    for old in [h for h in root.handlers if isinstance(h, _StructlogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class _StructlogHandler(logging.StreamHandler[TextIO]):
    """The root handler `configure_logging` installs, recognised when it is called again."""


def redact_card_numbers(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """structlog processor: replace card numbers in every value of the event by REDACTED."""
    for key, value in event_dict.items():
        event_dict[key] = _scrub(value)
    return event_dict


def _scrub(value: object) -> object:
    if isinstance(value, str):
        return replace_card_numbers(value, REDACTED)
    if isinstance(value, _PLAIN_TYPES):
        return value
    if isinstance(value, int):
        text = str(value)
        scrubbed = replace_card_numbers(text, REDACTED)
        return value if scrubbed == text else scrubbed
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    return _scrub(repr(value))


class Throttle:
    """Says yes at most once per `interval` seconds; counts the events it silenced."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0
        self._silenced = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            self._silenced += 1
            return False
        self._next = now + self._interval
        return True

    def take_silenced(self) -> int:
        """The events silenced since the last call, the count reset."""
        silenced, self._silenced = self._silenced, 0
        return silenced
