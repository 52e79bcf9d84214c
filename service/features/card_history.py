"""Per-card behaviour over event-time windows, kept in one fixed-size record per card.

The record is a flat `array('d')` (so a store can keep it as 1,728 bytes, whatever the
card's activity) made of time tiles, as Chronon and Tecton keep windows:

- the last `RECENT_EVENTS` swipes exactly, for the one-hour window that catches card
  testing: it stays sharp to the second (and counts at most `RECENT_EVENTS` + 1);
- 24 hour tiles (count, amount sum, card-not-present count) for the day window: it covers
  the current hour so far and the 23 whole hours before it;
- 30 day tiles (count, amount sum, sum of squared amounts) for the week and month
  windows: the current day so far and the 6 (or 29) whole days before it.

A window's edge is therefore tile-aligned; training replays this very code, so the model
learns the aligned windows the server computes. Relative features (amount against the
card's own mean) compare with the card's month *before* this transaction, so a first large
amount stands out. Sums of amounts are taken with `math.fsum`, exactly rounded whatever the
order or the Python version (`sum` of floats changed in 3.12), so a sum never differs
between training and serving; counts are whole numbers, exact with `sum`.
"""

from __future__ import annotations

import bisect
import math
import zlib
from array import array

from service.core.domain import EntryMode, Transaction
from service.features.tiles import DAY, HOUR, advance_ring

RECENT_EVENTS = 16
HOUR_TILES = 24
DAY_TILES = 30
# The terminals a card last used, least recently used first out. Both paths run this same
# rule, so the bound cannot cause skew.
TERMINAL_SLOTS = 8

# The record's layout: a header, then each ring in turn.
_LAST_TIME, _HOME_COUNTRY, _HOUR_HEAD, _DAY_HEAD, _SHIFT, _RECENT_NEXT = range(6)
_HOURS = 6  # per hour tile: count, amount sum, card-not-present count
_DAYS = _HOURS + 3 * HOUR_TILES  # per day tile: count, shifted sum, shifted sum of squares
_RECENT_TIMES = _DAYS + 3 * DAY_TILES
_RECENT_PROBES = _RECENT_TIMES + RECENT_EVENTS
_TERMINAL_KEYS = _RECENT_PROBES + RECENT_EVENTS
_TERMINAL_SEEN = _TERMINAL_KEYS + TERMINAL_SLOTS
CARD_RECORD_SIZE = _TERMINAL_SEEN + TERMINAL_SLOTS

_RELATIVE_NOISE = 1e-12
_NEW_RECORD = array("d", [0.0] * CARD_RECORD_SIZE)
_NEW_RECORD[_LAST_TIME] = -math.inf
_NEW_RECORD[_HOUR_HEAD] = _NEW_RECORD[_DAY_HEAD] = -1.0
_NEW_RECORD[_RECENT_TIMES:_RECENT_PROBES] = array("d", [-math.inf] * RECENT_EVENTS)
_NEW_RECORD[_TERMINAL_SEEN:CARD_RECORD_SIZE] = array("d", [-math.inf] * TERMINAL_SLOTS)

CARD_FEATURES: tuple[tuple[str, str], ...] = (
    ("card_tx_count_1h", "Card's transactions in the last hour, this one included."),
    ("card_tx_count_1d", "Card's transactions this hour and the 23 before, this one included."),
    ("card_tx_count_7d", "Card's transactions today and the 6 days before, this one included."),
    ("card_tx_count_30d", "Card's transactions today and the 29 days before, this one included."),
    ("card_amount_mean_1d", "Card's mean amount over the day window, this one included."),
    ("card_amount_mean_7d", "Card's mean amount over the week window, this one included."),
    ("card_amount_mean_30d", "Card's mean amount over the month window, this one included."),
    ("card_amount_std_30d", "Standard deviation of the card's amounts over the month window."),
    ("amount_to_card_mean_30d", "Amount over the card's earlier month mean; -1 if none."),
    ("amount_zscore_30d", "Amount's z-score against the card's earlier month; 0 if too few."),
    ("card_small_amount_count_1h", "Card's probe-sized amounts in the last hour (card testing)."),
    ("card_not_present_count_1d", "Card's card-not-present transactions in the day window."),
    ("seconds_since_card_prev_tx", "Seconds since the card's previous transaction; -1 if none."),
    ("days_since_card_used_terminal", "Days since the card last used this terminal; -1 if never."),
    ("country_differs_from_card_home", "1 if the country is not the card's first; -1 unknown."),
)


def new_card_record() -> array[float]:
    """The record of a card never seen (or idle past the state horizon)."""
    return array("d", _NEW_RECORD)


def observe_card(
    record: array[float], tx: Transaction, small_amount: float, out: list[float]
) -> None:
    """Add `tx` to the card's `record` and append the card features to `out`."""
    last_time = record[_LAST_TIME]
    # Event time never runs backwards inside one card: a late swipe is treated as
    # happening at the card's latest time, so every ring only moves forward.
    now = tx.timestamp if tx.timestamp > last_time else last_time
    amount = tx.amount
    probe = amount < small_amount
    not_present = tx.card_present is False or tx.entry_mode == EntryMode.ECOMMERCE
    if last_time == -math.inf:
        record[_SHIFT] = amount  # sums of squares around a typical amount keep their digits

    # The last hour, exact: the ring holds the latest swipes, oldest first from `position`
    # (times never decrease within a card, so the rotated ring is sorted).
    position = int(record[_RECENT_NEXT])
    split = _RECENT_TIMES + position
    times = record[split:_RECENT_PROBES] + record[_RECENT_TIMES:split]
    inside = bisect.bisect_right(times, now - HOUR)
    count_hour = RECENT_EVENTS - inside
    split = _RECENT_PROBES + position
    probes_hour = sum((record[split:_TERMINAL_KEYS] + record[_RECENT_PROBES:split])[inside:])
    record[_RECENT_TIMES + position] = now
    record[_RECENT_PROBES + position] = probe
    record[_RECENT_NEXT] = (position + 1) % RECENT_EVENTS

    hour = int(now // HOUR)
    advance_ring(record, _HOURS, HOUR_TILES, 3, _HOUR_HEAD, hour)
    slot = _HOURS + 3 * (hour % HOUR_TILES)
    record[slot] += 1.0
    record[slot + 1] += amount
    record[slot + 2] += not_present
    count_day = sum(record[_HOURS:_DAYS:3])
    sum_day = math.fsum(record[_HOURS + 1 : _DAYS : 3])
    not_present_day = sum(record[_HOURS + 2 : _DAYS : 3])

    day = int(now // DAY)
    advance_ring(record, _DAYS, DAY_TILES, 3, _DAY_HEAD, day)
    shift = record[_SHIFT]
    prior_count = sum(record[_DAYS:_RECENT_TIMES:3])
    prior_sum = math.fsum(record[_DAYS + 1 : _RECENT_TIMES : 3])
    prior_squares = math.fsum(record[_DAYS + 2 : _RECENT_TIMES : 3])
    shifted = amount - shift
    slot = _DAYS + 3 * (day % DAY_TILES)
    record[slot] += 1.0
    record[slot + 1] += shifted
    record[slot + 2] += shifted * shifted
    week = _week_tiles(record, day)
    count_week = sum(week[0::3])
    sum_week = math.fsum(week[1::3]) + count_week * shift

    count = prior_count + 1.0
    month_sum = prior_sum + shifted
    mean = shift + month_sum / count
    out += (
        count_hour + 1,
        count_day,
        count_week,
        count,
        sum_day / count_day,
        sum_week / count_week,
        mean,
        _std(count, month_sum, prior_squares + shifted * shifted, mean),
    )
    if prior_count:
        prior_mean = shift + prior_sum / prior_count
        prior_std = _std(prior_count, prior_sum, prior_squares, prior_mean)
        out += (
            amount / prior_mean if prior_mean > 0 else -1.0,
            (amount - prior_mean) / prior_std if prior_count > 1 and prior_std > 0 else 0.0,
        )
    else:
        out += (-1.0, 0.0)
    out += (
        probes_hour + probe,
        not_present_day,
        -1.0 if last_time == -math.inf else now - last_time,
        _days_since_terminal(record, tx.terminal_id, now),
        _country_differs(record, tx.country),
    )
    record[_LAST_TIME] = now


# Where `observe_card` writes, for a store that applies a swipe itself (`card_swipe`).
CARD_LAYOUT: dict[str, int] = {
    "LAST_TIME": _LAST_TIME,
    "HOME_COUNTRY": _HOME_COUNTRY,
    "HOUR_HEAD": _HOUR_HEAD,
    "DAY_HEAD": _DAY_HEAD,
    "SHIFT": _SHIFT,
    "RECENT_NEXT": _RECENT_NEXT,
    "HOURS": _HOURS,
    "DAYS": _DAYS,
    "RECENT_TIMES": _RECENT_TIMES,
    "RECENT_PROBES": _RECENT_PROBES,
    "TERMINAL_KEYS": _TERMINAL_KEYS,
    "TERMINAL_SEEN": _TERMINAL_SEEN,
    "SIZE": CARD_RECORD_SIZE,
    "RECENT_EVENTS": RECENT_EVENTS,
    "HOUR_TILES": HOUR_TILES,
    "DAY_TILES": DAY_TILES,
    "TERMINAL_SLOTS": TERMINAL_SLOTS,
}


def card_swipe(tx: Transaction, small_amount: float) -> tuple[float, ...]:
    """What `observe_card` writes of `tx` that does not depend on the record: its time, the
    time's hour and day tiles, the amount, probe (1/0), card not present (1/0), the
    terminal's key and the country's code (0 when not sent). A store that applies swipes
    itself (the Redis store, in Lua) takes these and is held to `observe_card`'s bytes by
    a test."""
    now = tx.timestamp
    not_present = tx.card_present is False or tx.entry_mode == EntryMode.ECOMMERCE
    return (
        now,
        int(now // HOUR),
        int(now // DAY),
        tx.amount,
        float(tx.amount < small_amount),
        float(not_present),
        float(zlib.crc32(tx.terminal_id.encode()) + 1),
        float(int.from_bytes(tx.country.encode()[:6], "big")) if tx.country else 0.0,
    )


def card_last_time(record: array[float]) -> float:
    """The event time of the card's latest swipe."""
    return record[_LAST_TIME]


def _week_tiles(record: array[float], day: int) -> array[float]:
    """The 7 day tiles ending with `day` (in ring order: the sums are exact in any)."""
    first, last = (day - 6) % DAY_TILES, day % DAY_TILES
    if first <= last:
        return record[_DAYS + 3 * first : _DAYS + 3 * last + 3]
    return record[_DAYS + 3 * first : _RECENT_TIMES] + record[_DAYS : _DAYS + 3 * last + 3]


def _std(count: float, shifted_sum: float, shifted_squares: float, mean: float) -> float:
    """Population standard deviation from sums of amounts shifted by a typical amount.

    Sums carry rounding noise, so a variance within ~1e-12 of the squared mean is zero:
    otherwise identical amounts would give a tiny, meaningless deviation.
    """
    centre = shifted_sum / count
    variance = shifted_squares / count - centre * centre
    return math.sqrt(variance) if variance > _RELATIVE_NOISE * mean * mean else 0.0


def _days_since_terminal(record: array[float], terminal_id: str, now: float) -> float:
    # CRC-32 plus one (0 marks a free slot): stable across processes, unlike hash().
    key = float(zlib.crc32(terminal_id.encode()) + 1)
    oldest = _TERMINAL_KEYS
    for slot in range(_TERMINAL_KEYS, _TERMINAL_SEEN):
        if record[slot] == key:
            previous = record[slot + TERMINAL_SLOTS]
            record[slot + TERMINAL_SLOTS] = now
            return (now - previous) / DAY
        if record[slot + TERMINAL_SLOTS] < record[oldest + TERMINAL_SLOTS]:
            oldest = slot
    record[oldest] = key
    record[oldest + TERMINAL_SLOTS] = now
    return -1.0


def _country_differs(record: array[float], country: str) -> float:
    if not country:
        return -1.0
    code = float(int.from_bytes(country.encode()[:6], "big"))
    home = record[_HOME_COUNTRY]
    if not home:
        record[_HOME_COUNTRY] = home = code
    return 0.0 if code == home else 1.0
