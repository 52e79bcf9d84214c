"""The simulator's fraud scenarios, numbered as in the frame's `fraud_scenario` column.

Scenarios 1-3 are the Fraud Detection Handbook's and mark the genuine purchases they take
over; 4 (card testing) and 5 (card-not-present spree) are the extended profile's and add
online purchases of their own. `training.simulation.simulate` lists them all and applies them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from service.core.domain import EntryMode
from training.simulation.params import SimulationParams
from training.simulation.world import (
    COUNTRIES,
    DAY,
    HOME_COUNTRIES,
    HOUR,
    Floats,
    Ints,
    Rows,
    World,
)

FRAUD_AMOUNT_THRESHOLD = 220.0
TERMINAL_COMPROMISE_DAYS = 28
CARD_COMPROMISE_DAYS = 14
CARD_COMPROMISE_FACTOR = 5


def flag_large_amounts(rows: Rows) -> None:
    """Scenario 1: every amount above the threshold is fraud."""
    rows.scenario[rows.amount > FRAUD_AMOUNT_THRESHOLD] = 1


def compromise_terminals(rows: Rows, params: SimulationParams, rng: np.random.Generator) -> None:
    """Scenario 2: every purchase at a compromised terminal during its window is fraud."""
    picks = _daily_picks(rng, params.terminals, params.compromised_terminals_per_day, params.days)
    mask = _window_mask(picks, params.terminals, TERMINAL_COMPROMISE_DAYS)
    rows.scenario[mask[rows.terminal, rows.seconds // DAY]] = 2


def compromise_cards(rows: Rows, params: SimulationParams, rng: np.random.Generator) -> None:
    """Scenario 3: a third of the compromised cards' purchases in the window, amount x 5.

    Unlike the handbook, a purchase is multiplied once only, even when windows overlap.
    `rows` must be ordered by customer then day, as `training.simulation.simulate` draws shop
    purchases.
    """
    picks = _daily_picks(rng, params.customers, params.compromised_cards_per_day, params.days)
    if picks.size == 0:
        return
    key = rows.customer * params.days + rows.seconds // DAY
    for day, cards in enumerate(picks):
        end = min(day + CARD_COMPROMISE_DAYS, params.days)
        first = np.searchsorted(key, cards * params.days + day)
        last = np.searchsorted(key, cards * params.days + end)
        window = np.concatenate([np.arange(a, b) for a, b in zip(first, last, strict=True)])
        candidates = window[rows.scenario[window] != 3]
        chosen = rng.choice(candidates, len(candidates) // 3, replace=False)
        rows.amount[chosen] = np.round(rows.amount[chosen] * CARD_COMPROMISE_FACTOR, 2)
        rows.scenario[chosen] = 3


def card_testing_rows(params: SimulationParams, world: World, rng: np.random.Generator) -> Rows:
    """Scenario 4: for a few cards a day, tiny online payments, then large ones."""
    online = world.online_terminals(np.arange(len(COUNTRIES)))
    picks = _daily_picks(rng, params.customers, params.card_testing_per_day, params.days)
    return Rows.concat(
        [_card_test(rng, card, day, online) for day, cards in enumerate(picks) for card in cards]
    )


def cnp_spree_rows(params: SimulationParams, world: World, rng: np.random.Generator) -> Rows:
    """Scenario 5: for a few cards a day, an online spree abroad."""
    picks = _daily_picks(rng, params.customers, params.cnp_sprees_per_day, params.days)
    return Rows.concat(
        [_cnp_spree(rng, card, day, world) for day, cards in enumerate(picks) for card in cards]
    )


def _daily_picks(rng: np.random.Generator, population: int, per_day: int, days: int) -> Ints:
    """`per_day` distinct entities drawn each day: an array of shape (days, per_day)."""
    picks = [rng.choice(population, per_day, replace=False) for _ in range(days)]
    return np.array(picks, dtype=np.int64).reshape(days, per_day)


def _window_mask(picks: Ints, population: int, length: int) -> npt.NDArray[np.bool_]:
    """(entity, day) pairs inside a window of `length` days opened by a pick on that day."""
    days = len(picks)
    mask = np.zeros((population, days), dtype=np.bool_)
    for day, entities in enumerate(picks):
        mask[entities, day : day + length] = True
    return mask


def _card_test(rng: np.random.Generator, card: int, day: int, online: Ints) -> Rows:
    """3-8 payments of 0.10-2.00 at one site seconds apart, then 1-2 large ones within hours."""
    tests, cashouts = int(rng.integers(3, 9)), int(rng.integers(1, 3))
    start = day * DAY + rng.integers(0, DAY - 6 * HOUR)
    test_times = start + np.cumsum(rng.integers(5, 61, tests))
    cashout_times = test_times[-1] + np.sort(rng.integers(HOUR // 2, 5 * HOUR, cashouts))
    amounts = [rng.uniform(0.10, 2.00, tests), rng.uniform(250, 1500, cashouts)]
    terminals = [np.repeat(rng.choice(online), tests), rng.choice(online, cashouts)]
    seconds = np.concatenate([test_times, cashout_times])
    return _fraud_rows(card, np.concatenate(terminals), seconds, np.concatenate(amounts), 4)


def _cnp_spree(rng: np.random.Generator, card: int, day: int, world: World) -> Rows:
    """3-6 purchases within three hours at online merchants of one country.

    The country is nobody's home, so the spree is abroad whatever the card.
    """
    country = rng.integers(HOME_COUNTRIES, len(COUNTRIES))
    purchases = int(rng.integers(3, 7))
    start = day * DAY + rng.integers(0, DAY - 4 * HOUR)
    seconds = start + np.sort(rng.integers(0, 3 * HOUR, purchases))
    terminal = rng.choice(world.online_terminals(np.array([country])), purchases)
    return _fraud_rows(card, terminal, seconds, rng.uniform(30, 600, purchases), 5)


def _fraud_rows(card: int, terminal: Ints, seconds: Ints, amount: Floats, scenario: int) -> Rows:
    """Online fraudulent purchases made with one card."""
    count = len(terminal)
    return Rows(
        customer=np.full(count, card, dtype=np.int64),
        terminal=terminal,
        seconds=seconds,
        amount=np.round(amount, 2),
        entry_mode=np.full(count, EntryMode.ECOMMERCE, dtype=np.int64),
        scenario=np.full(count, scenario, dtype=np.int64),
    )
