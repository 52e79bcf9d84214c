"""How far ahead of the server's clock the requests beyond the allowed skew were.

A transaction whose event time is further ahead than `limits.max_future_skew_seconds` gets
the fallback decision (`fraud_fallback_total{reason="clock_skew"}` counts it); an outcome's
report time that far ahead is counted from the latest time allowed. Either way one of the
two clocks is wrong, and `fraud_clock_skew_seconds{time}` says by how much: minutes (a clock
drifting, NTP lost) or days (a terminal's clock reset, a server's clock jumped). Observed
only for requests beyond the skew, through children bound at import: a request in time
costs nothing here.
"""

from __future__ import annotations

from prometheus_client import Histogram

from service.core.ports import SKEWED_TIMES, SkewedTime

# From just past the default skew (5 minutes) to a year: drift, a lost time server, a
# clock reset to another day.
CLOCK_SKEW_BUCKETS = (
    300.0, 600.0, 1_800.0, 3_600.0, 21_600.0, 86_400.0, 604_800.0, 2_592_000.0, 31_536_000.0,
)  # fmt: skip
CLOCK_SKEW = Histogram(
    "fraud_clock_skew_seconds",
    "How far ahead of the server's clock request times beyond the allowed skew were, by "
    "which time: a transaction's event_time (answered by the fallback rules, not counted in "
    "the features) or an outcome's reported_at (counted from the latest time allowed).",
    ["time"],
    buckets=CLOCK_SKEW_BUCKETS,
)
CLOCK_SKEW_HISTOGRAMS = {time: CLOCK_SKEW.labels(time) for time in SKEWED_TIMES}


class ClockSkewMetrics:
    """The scoring core's `ClockSkewListener` (`service.core.ports`): one observation per
    request time beyond the skew."""

    __slots__ = ()

    def on_clock_skew(self, time: SkewedTime, seconds_ahead: float) -> None:
        """Observe how far ahead of the server's clock `time` was."""
        CLOCK_SKEW_HISTOGRAMS[time].observe(seconds_ahead)
