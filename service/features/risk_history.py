"""Per-terminal (and per-merchant) fraud risk, counting only labels that would be known.

At event time t with label delay d, a window of width w covers the transactions in
(t - d - w, t - d]: old enough that their outcome is settled. A transaction in it counts as
fraud once a fraud outcome for it has been *reported* (reported_at <= t), and as genuine
otherwise: in practice chargebacks arrive for frauds only. Training feeds each known fraud
as an outcome reported one delay after its transaction, which is exactly the handbook's
delayed window; the server feeds real outcomes at the time they were reported.

Outcomes are queued and applied lazily, when the next transaction at this terminal reads
the windows, so a report that arrives early (in event time) never leaks into a feature.
"""

from __future__ import annotations

import heapq
import math

DAY = 86_400.0
WEEK = 7 * DAY
MONTH = 30 * DAY
RISK_WINDOWS = (DAY, WEEK, MONTH)
_COMPACT_AFTER = 256


def risk_features(prefix: str, noun: str) -> tuple[tuple[str, str], ...]:
    """Names and descriptions of the risk features for one kind of entity, in output order."""
    specs: list[tuple[str, str]] = []
    for days in (1, 7, 30):
        specs.append(
            (
                f"{prefix}_tx_count_{days}d_delayed",
                f"{noun}'s transactions in the {days} day(s) before the label delay.",
            )
        )
        specs.append(
            (
                f"{prefix}_risk_{days}d",
                "Share of those known to be fraud; 0 when there are none.",
            )
        )
    return tuple(specs)


class RiskHistory:
    """Transactions of one terminal or merchant, with their fraud labels as known so far.

    Like the card state, the three windows are written out rather than looped over: this is
    on the scoring path. All three windows end at the same settled cut-off, so an entry
    enters them together and leaves the shortest first.
    """

    __slots__ = (
        "_base",
        "_frauds_day",
        "_frauds_month",
        "_frauds_week",
        "_is_fraud",
        "_last_time",
        "_mature",
        "_pending",
        "_sequence",
        "_start_day",
        "_start_month",
        "_start_week",
        "_times",
    )

    def __init__(self) -> None:
        self._times: list[float] = []
        self._is_fraud: list[int] = []
        self._base = 0  # absolute index of _times[0]; absolute indices survive compaction
        self._mature = 0  # first entry still inside the label delay
        self._start_day = self._start_week = self._start_month = 0
        self._frauds_day = self._frauds_week = self._frauds_month = 0
        # Outcomes waiting for their report time: (reported_at, arrival order, index, fraud).
        self._pending: list[tuple[float, int, int, bool]] = []
        self._sequence = 0
        self._last_time = -math.inf

    def observe(self, timestamp: float, label_delay: float, out: list[float]) -> int:
        """Append the risk features at `timestamp`, then record the transaction.

        Returns the transaction's absolute index, the handle for reporting its outcome.
        """
        now = timestamp if timestamp > self._last_time else self._last_time
        self._last_time = now
        pending = self._pending
        while pending and pending[0][0] <= now:
            _, _, index, fraud = heapq.heappop(pending)
            self._set_label(index - self._base, fraud)
        times = self._times
        is_fraud = self._is_fraud
        # This transaction is never settled (label_delay > 0): it ends every loop below.
        times.append(now)
        is_fraud.append(0)

        settled = now - label_delay
        mature = self._mature
        entering = 0
        while times[mature] <= settled:
            entering += is_fraud[mature]
            mature += 1
        self._mature = mature

        cutoff = settled - DAY
        start = self._start_day
        frauds = self._frauds_day + entering
        while times[start] <= cutoff:
            frauds -= is_fraud[start]
            start += 1
        self._start_day = start
        self._frauds_day = frauds
        count = mature - start
        out += (count, frauds / count if count else 0.0)

        cutoff = settled - WEEK
        start = self._start_week
        frauds = self._frauds_week + entering
        while times[start] <= cutoff:
            frauds -= is_fraud[start]
            start += 1
        self._start_week = start
        self._frauds_week = frauds
        count = mature - start
        out += (count, frauds / count if count else 0.0)

        cutoff = settled - MONTH
        start = self._start_month
        frauds = self._frauds_month + entering
        while times[start] <= cutoff:
            frauds -= is_fraud[start]
            start += 1
        self._start_month = start
        self._frauds_month = frauds
        count = mature - start
        out += (count, frauds / count if count else 0.0)

        if start >= _COMPACT_AFTER and start * 2 >= len(times):
            self._compact(start)
        return self._base + len(times) - 1

    def schedule_outcome(self, index: int, is_fraud: bool, reported_at: float) -> None:
        """Count transaction `index` as fraud (or not) from event time `reported_at` on."""
        heapq.heappush(self._pending, (reported_at, self._sequence, index, is_fraud))
        self._sequence += 1

    def _set_label(self, position: int, is_fraud: bool) -> None:
        if position < 0:
            return  # fell out of every window long ago
        delta = int(is_fraud) - self._is_fraud[position]
        if not delta:
            return
        self._is_fraud[position] += delta
        if position < self._mature:
            if position >= self._start_day:
                self._frauds_day += delta
            if position >= self._start_week:
                self._frauds_week += delta
            if position >= self._start_month:
                self._frauds_month += delta

    def _compact(self, dead: int) -> None:
        del self._times[:dead]
        del self._is_fraud[:dead]
        self._base += dead
        self._mature -= dead
        self._start_day -= dead
        self._start_week -= dead
        self._start_month = 0
