"""Per-caller rate limits: a token bucket for each caller identity of a method, checked when
the server picks a call up, before its request is read.

ReportOutcome is the method limited (`report_limit` settings, a caller's own
`report_per_second` and `report_burst` first): a caller holding the `report` role could
otherwise send made-up outcomes as fast as the server answers. The bucket holds at most
`burst` tokens, refills at `per_second`, and each call takes one; a call finding it empty is
refused with RESOURCE_EXHAUSTED and counted by caller (`fraud_outcomes_rate_limited_total`).
Callers come from the settings, so the buckets, their counters and their refusal messages
are made once, at start: a call costs a dict lookup and a few float operations, no label
lookup and no formatting. In open mode (no caller configured: development only, production
refuses it) nothing is limited, as nothing else is, so development is unchanged.

Each server process keeps its own buckets: with N workers or replicas behind a balancer a
caller may send up to N times the rate in all. A limit shared through the state's Redis
would cost a round trip per call; N is known and small, so the settings can divide by it.

Hand-rolled rather than a library's: `limits` and `pyrate-limiter` key their windows by
formatted strings and offer storage back ends this does not need, `aiolimiter` makes a
caller wait instead of refusing it; the bucket is ten lines, tested directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import Counter

from service.config.settings import ServeSettings
from service.observability.metrics import rate_limited_counters


@dataclass(frozen=True, slots=True)
class Rate:
    """Calls a second on average, and how many may come at once above it."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError("a rate needs per_second above 0 and a burst of at least 1")


class TokenBucket:
    """`rate.burst` tokens at most, refilled at `rate.per_second`; a call takes one."""

    __slots__ = ("_burst", "_per_second", "_tokens", "_updated")

    def __init__(self, rate: Rate, now: float) -> None:
        """A full bucket at `now` (seconds on a monotonic clock)."""
        self._per_second = rate.per_second
        self._burst = float(rate.burst)
        self._tokens = self._burst
        self._updated = now

    def take(self, now: float) -> bool:
        """Take a token at `now` if there is one; whether there was."""
        tokens = min(self._burst, self._tokens + (now - self._updated) * self._per_second)
        self._updated = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


class _Limited:
    """One caller's bucket, its refusal counter and its refusal message."""

    __slots__ = ("bucket", "details", "refused")

    def __init__(self, bucket: TokenBucket, refused: Counter, details: str) -> None:
        self.bucket = bucket
        self.refused = refused
        self.details = details


class CallerRateLimits:
    """The buckets of one method's callers, each with its counter, made once."""

    def __init__(
        self, method: str, rates: Mapping[str, Rate], clock: Callable[[], float] = time.monotonic
    ) -> None:
        """`method` (its name, for the refusal message) limited to `rates` by caller name;
        a caller absent from `rates` is not limited. `clock` is monotonic, in seconds."""
        self._clock = clock
        counters = rate_limited_counters(rates.keys())
        now = clock()
        self._callers = {
            caller: _Limited(
                TokenBucket(rate, now), counters[caller], _details(method, caller, rate)
            )
            for caller, rate in rates.items()
        }

    def refusal(self, caller: str) -> str | None:
        """None when `caller` may make the call now (a token taken); else the details of
        its refusal, counted."""
        limited = self._callers.get(caller)
        if limited is None or limited.bucket.take(self._clock()):
            return None
        limited.refused.inc()
        return limited.details


def report_rates(settings: ServeSettings) -> dict[str, Rate]:
    """The ReportOutcome rate of each caller `settings` give the `report` role; none in
    open mode, where calls have no identity to limit."""
    default = settings.report_limit
    return {
        caller.name: Rate(
            caller.report_per_second or default.per_second, caller.report_burst or default.burst
        )
        for caller in settings.auth.callers
        if "report" in caller.roles
    }


def _details(method: str, caller: str, rate: Rate) -> str:
    return (
        f"caller {caller!r} is over the {method} rate ({rate.per_second:g} a second, bursts "
        f"of {rate.burst}): retry later, more slowly"
    )
