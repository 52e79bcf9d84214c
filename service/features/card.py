"""Per-card behaviour: how this card has been spending over sliding event-time windows.

Windows are right-closed and include the current transaction, (t - w, t]. Each window keeps
a start pointer and running sums, so one observation costs O(1) amortised whatever the
card's history. Relative features (amount against the card's own mean) compare with the
card's history *before* this transaction, so a first large amount stands out.
"""

from __future__ import annotations

import math

from service.domain import EntryMode, Transaction

HOUR = 3_600.0
DAY = 86_400.0
CARD_WINDOWS = (HOUR, DAY, 7 * DAY, 30 * DAY)
_LONG = len(CARD_WINDOWS) - 1

# Bound on the per-card "last seen at terminal" map; when it is reached the older half is
# forgotten. Both paths run this same rule, so it cannot cause skew.
MAX_TERMINALS_PER_CARD = 512
_COMPACT_AFTER = 64

CARD_FEATURES: tuple[tuple[str, str], ...] = (
    ("card_tx_count_1h", "Card's transactions in the last hour, this one included."),
    ("card_tx_count_1d", "Card's transactions in the last day, this one included."),
    ("card_tx_count_7d", "Card's transactions in the last 7 days, this one included."),
    ("card_tx_count_30d", "Card's transactions in the last 30 days, this one included."),
    ("card_amount_mean_1d", "Card's mean amount over the last day, this one included."),
    ("card_amount_mean_7d", "Card's mean amount over the last 7 days, this one included."),
    ("card_amount_mean_30d", "Card's mean amount over the last 30 days, this one included."),
    ("card_amount_std_30d", "Standard deviation of the card's amounts over 30 days."),
    ("amount_to_card_mean_30d", "Amount over the card's earlier 30-day mean; -1 if none."),
    ("amount_zscore_30d", "Amount's z-score against the card's earlier 30 days; 0 if too few."),
    ("card_small_amount_count_1h", "Card's probe-sized amounts in the last hour (card testing)."),
    ("card_not_present_count_1d", "Card's card-not-present transactions in the last day."),
    ("seconds_since_card_prev_tx", "Seconds since the card's previous transaction; -1 if none."),
    ("days_since_card_used_terminal", "Days since the card last used this terminal; -1 if never."),
    ("country_differs_from_card_home", "1 if the country is not the card's first; -1 unknown."),
)


class CardHistory:
    """The sliding-window state of one card."""

    __slots__ = (
        "_entries",
        "_home_country",
        "_last_time",
        "_not_present_day",
        "_small_hour",
        "_starts",
        "_sum_squares_long",
        "_sums",
        "_terminal_last_seen",
    )

    def __init__(self) -> None:
        # (event time, amount, is probe-sized, is card-not-present), in event-time order.
        self._entries: list[tuple[float, float, bool, bool]] = []
        self._starts = [0] * len(CARD_WINDOWS)
        self._sums = [0.0] * len(CARD_WINDOWS)
        self._sum_squares_long = 0.0
        self._small_hour = 0
        self._not_present_day = 0
        self._last_time = -math.inf
        self._terminal_last_seen: dict[str, float] = {}
        self._home_country = ""

    def observe(self, tx: Transaction, small_amount: float, out: list[float]) -> None:
        """Add `tx` to the card's history and append the card features to `out`."""
        # Event time never runs backwards inside one card: a late swipe is treated as
        # happening at the card's latest time, which keeps every window pointer valid.
        now = tx.timestamp if tx.timestamp > self._last_time else self._last_time
        self._expire(now)
        entries = self._entries
        prior_count = len(entries) - self._starts[_LONG]
        prior_sum = self._sums[_LONG]
        prior_squares = self._sum_squares_long

        amount = tx.amount
        is_small = amount < small_amount
        not_present = tx.card_present is False or tx.entry_mode == EntryMode.ECOMMERCE
        entries.append((now, amount, is_small, not_present))
        sums = self._sums
        for k in range(len(sums)):
            sums[k] += amount
        self._sum_squares_long += amount * amount
        self._small_hour += is_small
        self._not_present_day += not_present

        total = len(entries)
        starts = self._starts
        counts = [total - start for start in starts]
        out.extend(counts)
        out.append(sums[1] / counts[1])
        out.append(sums[2] / counts[2])
        mean_long = sums[_LONG] / counts[_LONG]
        out.append(mean_long)
        out.append(_std(self._sum_squares_long, mean_long, counts[_LONG]))
        self._append_relative(amount, prior_count, prior_sum, prior_squares, out)
        out.append(self._small_hour)
        out.append(self._not_present_day)
        out.append(now - self._last_time if self._last_time > -math.inf else -1.0)
        self._last_time = now
        out.append(self._days_since_terminal(tx.terminal_id, now))
        out.append(self._country_differs(tx.country))

    @staticmethod
    def _append_relative(
        amount: float, count: int, total: float, squares: float, out: list[float]
    ) -> None:
        if count == 0:
            out.append(-1.0)
            out.append(0.0)
            return
        mean = total / count
        out.append(amount / mean if mean > 0 else -1.0)
        std = _std(squares, mean, count)
        out.append((amount - mean) / std if count > 1 and std > 0 else 0.0)

    def _expire(self, now: float) -> None:
        """Move each window's start past the entries that fell out of it."""
        entries = self._entries
        starts = self._starts
        sums = self._sums
        for k, width in enumerate(CARD_WINDOWS):
            cutoff = now - width
            start = starts[k]
            while start < len(entries) and entries[start][0] <= cutoff:
                _, amount, is_small, not_present = entries[start]
                sums[k] -= amount
                if k == 0:
                    self._small_hour -= is_small
                elif k == 1:
                    self._not_present_day -= not_present
                elif k == _LONG:
                    self._sum_squares_long -= amount * amount
                start += 1
            if start == len(entries):
                sums[k] = 0.0  # an empty window forgets accumulated rounding
                if k == _LONG:
                    self._sum_squares_long = 0.0
            starts[k] = start
        self._compact()

    def _compact(self) -> None:
        oldest = self._starts[_LONG]
        if oldest >= _COMPACT_AFTER and oldest * 2 >= len(self._entries):
            del self._entries[:oldest]
            self._starts = [start - oldest for start in self._starts]

    def _days_since_terminal(self, terminal_id: str, now: float) -> float:
        seen = self._terminal_last_seen
        previous = seen.get(terminal_id)
        if previous is None and len(seen) >= MAX_TERMINALS_PER_CARD:
            newest = sorted(seen.items(), key=lambda item: item[1])[-MAX_TERMINALS_PER_CARD // 2 :]
            self._terminal_last_seen = seen = dict(newest)
        seen[terminal_id] = now
        return -1.0 if previous is None else (now - previous) / DAY

    def _country_differs(self, country: str) -> float:
        if not country:
            return -1.0
        if not self._home_country:
            self._home_country = country
        return 0.0 if country == self._home_country else 1.0


def _std(sum_squares: float, mean: float, count: int) -> float:
    variance = sum_squares / count - mean * mean
    return math.sqrt(variance) if variance > 0 else 0.0
