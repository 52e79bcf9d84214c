"""Per-terminal (and per-merchant) fraud risk, counting only labels that would be known.

At event time t with label delay d, the settled time is t - d: the windows end at the
start of the hour holding it, so every transaction in them is older than the delay and
its outcome settled. The 1-day window is the 24 whole hours before; the 7- and 30-day
windows are the whole hours of the settled day so far and the 7 (or 30) whole days before
it. A transaction in them counts as fraud once a fraud outcome for it has been *reported*
(reported_at <= t), and as genuine otherwise: in practice chargebacks arrive for frauds
only. Training feeds each known fraud as an outcome reported one delay after its
transaction, the handbook's delayed window; the server feeds real outcomes at the time
they were reported.

Each terminal (or merchant) is one fixed-size record, a flat `array('d')`: a ring of hour
tiles (transactions, frauds known) from a day before the settled hour to now, a ring of
day tiles long enough for the delay and the month, and a few outcomes waiting for their
report time. A tile is read only once it is settled, so an outcome reported before then is
counted at once without leaking into any feature; one reported later waits until event
time reaches its report time.
"""

from __future__ import annotations

import math
from array import array

from service.features.state import SwipeLayout, TileCount
from service.features.tiles import DAY, HOUR, apply_count

RISK_WINDOW_DAYS = (1, 7, 30)
PENDING_OUTCOMES = 8
_LAST_TIME, _DAY_HEAD, _HOUR_HEAD, _PENDING_COUNT, _CACHED_HOUR = range(5)
# The six features last computed, for the settled hour in _CACHED_HOUR: a busy terminal or
# merchant reads the same settled windows until the hour turns or a fraud is counted.
_CACHE = 5
_DAYS = _CACHE + 6  # per tile, in both rings: transactions, frauds known


def risk_features(prefix: str, noun: str) -> tuple[tuple[str, str], ...]:
    """Names and descriptions of the risk features for one kind of entity, in output order."""
    windows = (
        (1, "the 24 whole hours before the settled hour"),
        (7, "the settled day's whole hours and the 7 whole days before"),
        (30, "the settled day's whole hours and the 30 whole days before"),
    )
    specs: list[tuple[str, str]] = []
    for days, span in windows:
        specs.append((f"{prefix}_tx_count_{days}d_delayed", f"{noun}'s transactions in {span}."))
        specs.append(
            (f"{prefix}_risk_{days}d", "Share of those known to be fraud; 0 when there are none.")
        )
    return tuple(specs)


class RiskRing:
    """The record layout and rules for one label delay; records are plain arrays."""

    def __init__(self, label_delay: float) -> None:
        self.label_delay = label_delay
        # Day tiles from the month before the settled day up to today, and one to spare;
        # hour tiles from a day before the settled hour up to now, and one to spare.
        self.day_tiles = math.ceil(label_delay / DAY) + 32
        self.hour_tiles = math.ceil(label_delay / HOUR) + 26
        self._hours = _DAYS + 2 * self.day_tiles
        self._pending = self._hours + 2 * self.hour_tiles  # per outcome: when, hour, change
        self.record_size = self._pending + 3 * PENDING_OUTCOMES
        fresh = array("d", [0.0] * self.record_size)
        fresh[_LAST_TIME] = -math.inf
        fresh[_DAY_HEAD] = fresh[_HOUR_HEAD] = fresh[_CACHED_HOUR] = -1.0
        for slot in range(self._pending, self.record_size, 3):
            fresh[slot] = math.inf  # a free slot
        self._fresh = fresh

    def swipe_layout(self) -> SwipeLayout:
        """The count's rings and a new record, for a store that counts a swipe itself."""
        return SwipeLayout(
            (_DAYS, self.day_tiles, _DAY_HEAD, self._hours, self.hour_tiles, _HOUR_HEAD),
            self._fresh[:_DAYS].tobytes(),
            self._fresh[self._pending :].tobytes(),
        )

    def new_record(self) -> array[float]:
        """The record of an entity never seen (or idle past the state horizon)."""
        return array("d", self._fresh)

    def observe(self, record: array[float], timestamp: float, out: list[float]) -> TileCount:
        """Count the transaction at `timestamp` and append the risk features.

        Returns the count: its hour tile (`TileCount.hour`) is the handle for reporting
        the transaction's outcome. The features read only settled tiles, so counting first
        changes none of them.
        """
        last_time = record[_LAST_TIME]
        now = timestamp if timestamp > last_time else last_time
        hour = int(now // HOUR)
        days = (_DAYS, self.day_tiles, _DAY_HEAD, hour // 24)
        counted = TileCount(now, (days, (self._hours, self.hour_tiles, _HOUR_HEAD, hour)))
        apply_count(record, counted)
        if record[_PENDING_COUNT]:
            self._fold_pending(record, now)
        settled_hour = int((now - self.label_delay) // HOUR)
        if record[_CACHED_HOUR] == settled_hour:
            out += record[_CACHE:_DAYS]
        else:
            self._compute(record, settled_hour, out)
        return counted

    def _compute(self, record: array[float], settled_hour: int, out: list[float]) -> None:
        """Append the six features of the windows ending at `settled_hour`, and cache them."""
        settled_day = settled_hour // 24
        # (transactions, frauds) pairs in time order: the 24 hours before the settled hour,
        # whose tail is the settled day's hours so far; the 30 days before the settled day,
        # whose tail is the last 7.
        hours = _ring_slice(record, self._hours, self.hour_tiles, settled_hour - 24, 24)
        days = _ring_slice(record, _DAYS, self.day_tiles, settled_day - 30, 30)
        count, frauds = sum(hours[0::2]), sum(hours[1::2])
        out += (count, frauds / count if count else 0.0)
        today = 2 * (24 - (settled_hour - settled_day * 24))  # where the settled day starts
        count = sum(hours[today::2]) + sum(days[-14::2])
        frauds = sum(hours[today + 1 :: 2]) + sum(days[-13::2])
        out += (count, frauds / count if count else 0.0)
        count = sum(hours[today::2]) + sum(days[0::2])
        frauds = sum(hours[today + 1 :: 2]) + sum(days[1::2])
        out += (count, frauds / count if count else 0.0)
        record[_CACHE:_DAYS] = array("d", out[-6:])
        record[_CACHED_HOUR] = settled_hour

    def apply_outcome(
        self, record: array[float], hour: int, change: int, reported_at: float
    ) -> None:
        """Count `change` (+1 a new fraud, -1 a fraud withdrawn) for the transaction of hour
        tile `hour`, from `reported_at` on."""
        if record[_PENDING_COUNT]:
            # Outcomes due by the latest transaction: folded already when this record was
            # observed here, still waiting in one counted by a shared store (`apply_count`).
            self._fold_pending(record, record[_LAST_TIME])
        if reported_at <= (hour + 1) * HOUR + self.label_delay or reported_at <= record[_LAST_TIME]:
            # No window reads the hour (or its day) before reported_at: no leak.
            self._add_fraud(record, hour, change)
            return
        slots = range(self._pending, self.record_size, 3)
        free = next((slot for slot in slots if record[slot] == math.inf), None)
        if free is None:  # all wait: the earliest counts a little early, on both paths
            free = min(slots, key=record.__getitem__)
            self._add_fraud(record, int(record[free + 1]), int(record[free + 2]))
        else:
            record[_PENDING_COUNT] += 1
        record[free : free + 3] = array("d", (reported_at, hour, change))

    def _add_fraud(self, record: array[float], hour: int, change: int) -> None:
        record[_CACHED_HOUR] = -1.0
        if hour > record[_HOUR_HEAD] - self.hour_tiles:
            record[self._hours + 2 * (hour % self.hour_tiles) + 1] += change
        day = hour // 24
        if day > record[_DAY_HEAD] - self.day_tiles:
            record[_DAYS + 2 * (day % self.day_tiles) + 1] += change

    def _fold_pending(self, record: array[float], now: float) -> None:
        for slot in range(self._pending, self.record_size, 3):
            if record[slot] <= now:
                self._add_fraud(record, int(record[slot + 1]), int(record[slot + 2]))
                record[slot] = math.inf
                record[_PENDING_COUNT] -= 1


def _ring_slice(
    record: array[float], base: int, tiles: int, first: int, count: int
) -> array[float]:
    """The (transactions, frauds) pairs of `count` tiles of a ring from tile `first` on, in
    time order."""
    start = first % tiles
    end = start + count
    if end <= tiles:
        return record[base + 2 * start : base + 2 * end]
    return record[base + 2 * start : base + 2 * tiles] + record[base : base + 2 * (end - tiles)]


def risk_last_time(record: array[float]) -> float:
    """The event time of the entity's latest transaction."""
    return record[_LAST_TIME]
