"""Per-card behaviour: how this card has been spending over sliding event-time windows.

Windows are right-closed and include the current transaction, (t - w, t]. Each window keeps
a start pointer and running sums, so one observation costs O(1) amortised whatever the
card's history. Relative features (amount against the card's own mean) compare with the
card's history *before* this transaction, so a first large amount stands out.
"""

from __future__ import annotations

import math

from service.core.domain import EntryMode, Transaction

HOUR = 3_600.0
DAY = 86_400.0
WEEK = 7 * DAY
MONTH = 30 * DAY
CARD_WINDOWS = (HOUR, DAY, WEEK, MONTH)

# Bound on the per-card "last seen at terminal" map; when it is reached the older half is
# forgotten. Both paths run this same rule, so it cannot cause skew.
MAX_TERMINALS_PER_CARD = 512
_COMPACT_AFTER = 64
_RELATIVE_NOISE = 1e-12

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
    """The sliding-window state of one card.

    The windows are written out one by one rather than looped over: this runs once per
    swipe on the server and once per row in training replay, and the unrolled form spares
    CPython a loop's per-window overhead. The current transaction is appended first and
    acts as a sentinel, so the expiry loops need no bounds checks.
    """

    __slots__ = (
        "_amounts",
        "_home_country",
        "_last_time",
        "_mean_month",
        "_not_present",
        "_not_present_day",
        "_probes",
        "_probes_hour",
        "_spread_month",
        "_start_day",
        "_start_hour",
        "_start_month",
        "_start_week",
        "_sum_day",
        "_sum_week",
        "_terminal_last_seen",
        "_times",
    )

    def __init__(self) -> None:
        # Parallel lists in event-time order; entries before _start_month are dead weight
        # until the next compaction.
        self._times: list[float] = []
        self._amounts: list[float] = []
        self._probes: list[bool] = []
        self._not_present: list[bool] = []
        self._start_hour = self._start_day = self._start_week = self._start_month = 0
        self._probes_hour = self._not_present_day = 0
        self._sum_day = self._sum_week = self._mean_month = self._spread_month = 0.0
        self._last_time = -math.inf
        self._terminal_last_seen: dict[str, float] = {}
        self._home_country = ""

    def observe(self, tx: Transaction, small_amount: float, out: list[float]) -> None:
        """Add `tx` to the card's history and append the card features to `out`."""
        last_time = self._last_time
        # Event time never runs backwards inside one card: a late swipe is treated as
        # happening at the card's latest time, which keeps every window pointer valid.
        now = tx.timestamp if tx.timestamp > last_time else last_time
        amount = tx.amount
        probe = amount < small_amount
        not_present = tx.card_present is False or tx.entry_mode == EntryMode.ECOMMERCE
        times = self._times
        amounts = self._amounts
        times.append(now)
        amounts.append(amount)
        self._probes.append(probe)
        self._not_present.append(not_present)
        size = len(times)
        newest = size - 1

        cutoff = now - HOUR
        start = self._start_hour
        probes_hour = self._probes_hour + probe
        while times[start] <= cutoff:
            probes_hour -= self._probes[start]
            start += 1
        self._start_hour = start
        self._probes_hour = probes_hour
        count_hour = size - start

        cutoff = now - DAY
        start = self._start_day
        sum_day = self._sum_day
        not_present_day = self._not_present_day + not_present
        while times[start] <= cutoff:
            sum_day -= amounts[start]
            not_present_day -= self._not_present[start]
            start += 1
        # A window holding only this transaction forgets accumulated rounding.
        sum_day = amount if start == newest else sum_day + amount
        self._start_day = start
        self._sum_day = sum_day
        self._not_present_day = not_present_day
        count_day = size - start

        cutoff = now - WEEK
        start = self._start_week
        sum_week = self._sum_week
        while times[start] <= cutoff:
            sum_week -= amounts[start]
            start += 1
        sum_week = amount if start == newest else sum_week + amount
        self._start_week = start
        self._sum_week = sum_week
        count_week = size - start

        # The month's mean and spread are kept as Welford's running mean and sum of squared
        # deviations, updated as amounts leave and enter: sums of squares would cancel
        # catastrophically when a card's amounts vary little around a large mean.
        cutoff = now - MONTH
        start = self._start_month
        mean = self._mean_month
        spread = self._spread_month
        count = newest - start
        while times[start] <= cutoff:
            old = amounts[start]
            count -= 1
            if count == 0:
                mean = spread = 0.0  # an empty window forgets accumulated rounding
            else:
                delta = old - mean
                mean -= delta / count
                spread -= delta * (old - mean)
            start += 1
        prior_count, prior_mean, prior_spread = count, mean, spread
        count += 1
        delta = amount - mean
        mean += delta / count
        spread += delta * (amount - mean)
        self._mean_month = mean
        self._spread_month = spread
        self._start_month = start

        out += (
            count_hour,
            count_day,
            count_week,
            count,
            sum_day / count_day,
            sum_week / count_week,
            mean,
            _std(spread, mean, count),
        )
        _append_relative(amount, prior_count, prior_mean, prior_spread, out)
        out += (
            probes_hour,
            not_present_day,
            -1.0 if last_time == -math.inf else now - last_time,
            self._days_since_terminal(tx.terminal_id, now),
            self._country_differs(tx.country),
        )
        self._last_time = now
        if start >= _COMPACT_AFTER and start * 2 >= size:
            self._compact(start)

    def _compact(self, dead: int) -> None:
        del self._times[:dead]
        del self._amounts[:dead]
        del self._probes[:dead]
        del self._not_present[:dead]
        self._start_hour -= dead
        self._start_day -= dead
        self._start_week -= dead
        self._start_month = 0

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


def _append_relative(
    amount: float, count: int, mean: float, spread: float, out: list[float]
) -> None:
    """Amount against the card's earlier 30 days: ratio to the mean, and z-score."""
    if count == 0:
        out += (-1.0, 0.0)
        return
    std = _std(spread, mean, count)
    out += (
        amount / mean if mean > 0 else -1.0,
        (amount - mean) / std if count > 1 and std > 0 else 0.0,
    )


def _std(spread: float, mean: float, count: int) -> float:
    """Population standard deviation from the sum of squared deviations `spread`.

    Running updates carry rounding noise, so a variance within ~1e-12 of the squared mean
    is zero: otherwise identical amounts would give a tiny, meaningless deviation.
    """
    variance = spread / count
    return math.sqrt(variance) if variance > _RELATIVE_NOISE * mean * mean else 0.0
