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
RISK_WINDOWS = (DAY, 7 * DAY, 30 * DAY)
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
                f"Share of those known to be fraud; 0 when there are none.",
            )
        )
    return tuple(specs)


class RiskHistory:
    """Transactions of one terminal or merchant, with their fraud labels as known so far."""

    __slots__ = (
        "_base",
        "_frauds",
        "_is_fraud",
        "_last_time",
        "_mature",
        "_pending",
        "_sequence",
        "_starts",
        "_times",
    )

    def __init__(self) -> None:
        self._times: list[float] = []
        self._is_fraud: list[int] = []
        self._base = 0  # absolute index of _times[0]; absolute indices survive compaction
        self._mature = 0  # first entry still inside the label delay
        self._starts = [0] * len(RISK_WINDOWS)
        self._frauds = [0] * len(RISK_WINDOWS)
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
            _, _, index, is_fraud = heapq.heappop(pending)
            self._set_label(index - self._base, is_fraud)
        self._advance(now - label_delay)
        starts = self._starts
        frauds = self._frauds
        mature = self._mature
        for k in range(len(RISK_WINDOWS)):
            count = mature - starts[k]
            out.append(count)
            out.append(frauds[k] / count if count else 0.0)
        self._compact()
        self._times.append(now)
        self._is_fraud.append(0)
        return self._base + len(self._times) - 1

    def schedule_outcome(self, index: int, is_fraud: bool, reported_at: float) -> None:
        """Count transaction `index` as fraud (or not) from event time `reported_at` on."""
        heapq.heappush(self._pending, (reported_at, self._sequence, index, is_fraud))
        self._sequence += 1

    def _advance(self, settled_until: float) -> None:
        times = self._times
        is_fraud = self._is_fraud
        frauds = self._frauds
        mature = self._mature
        while mature < len(times) and times[mature] <= settled_until:
            if is_fraud[mature]:
                for k in range(len(frauds)):
                    frauds[k] += 1
            mature += 1
        self._mature = mature
        starts = self._starts
        for k, width in enumerate(RISK_WINDOWS):
            cutoff = settled_until - width
            start = starts[k]
            while start < mature and times[start] <= cutoff:
                frauds[k] -= is_fraud[start]
                start += 1
            starts[k] = start

    def _set_label(self, position: int, is_fraud: bool) -> None:
        if position < 0:
            return  # fell out of every window long ago
        new = int(is_fraud)
        delta = new - self._is_fraud[position]
        if not delta:
            return
        self._is_fraud[position] = new
        if position < self._mature:
            for k, start in enumerate(self._starts):
                if position >= start:
                    self._frauds[k] += delta

    def _compact(self) -> None:
        oldest = self._starts[-1]
        if oldest >= _COMPACT_AFTER and oldest * 2 >= len(self._times):
            del self._times[:oldest]
            del self._is_fraud[:oldest]
            self._base += oldest
            self._mature -= oldest
            self._starts = [start - oldest for start in self._starts]
