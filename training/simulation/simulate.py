"""A seeded card-transaction simulator after the design of the Fraud Detection Handbook.

Le Borgne et al., "Reproducible Machine Learning for Credit Card Fraud Detection - Practical
Handbook", chapter 3.2, scatter customers and terminals on a 100 x 100 plane; each customer
buys at the terminals within a radius of it. This module implements that design from its
description (profile "handbook") and by default (profile "extended") adds merchants, merchant
category codes, entry modes, countries, online terminals and two fraud patterns the handbook
lacks. The `fraud_scenario` column says which scenario made each fraud
(`training.simulation.fraud_patterns` draws them):

    0  genuine
    1  amount above 220
    2  compromised terminal: every purchase there for 28 days
    3  compromised card: a third of its purchases for 14 days, at five times the amount
    4  card testing: a burst of tiny online payments, then one or two large ones
    5  card-not-present spree: several online purchases abroad within a few hours

Scenarios 2 and 3 act on the handbook's purchases, all card-present. Every part draws from its
own generator spawned from one SeedSequence, so the extended profile keeps the handbook
profile's rows exactly (they are its card-present rows) and adds online ones.
`training.simulation.params` says what to simulate; `training.simulation.history_files` writes
the frame.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.neighbors import NearestNeighbors

from service.core.domain import EntryMode
from training.simulation.fraud_patterns import (
    card_testing_rows,
    cnp_spree_rows,
    compromise_cards,
    compromise_terminals,
    flag_large_amounts,
)
from training.simulation.params import SimulationParams
from training.simulation.world import (
    COUNTRIES,
    CURRENCIES,
    DAY,
    HOME_COUNTRIES,
    Floats,
    Ints,
    Rows,
    World,
)

COLUMNS = (
    "transaction_id",
    "timestamp",
    "card_id",
    "terminal_id",
    "amount",
    "is_fraud",
    "merchant_id",
    "mcc",
    "entry_mode",
    "card_present",
    "currency",
    "country",
    "fraud_scenario",
)

PLANE_SIZE = 100.0
# How the online terminals spread over `COUNTRIES`.
ONLINE_COUNTRY_WEIGHTS = (0.2, 0.1, 0.2, 0.2, 0.1, 0.08, 0.1, 0.02)

SHOP_MCCS = {5411: 22, 5812: 14, 5814: 10, 5541: 10, 5912: 6, 5311: 6, 5999: 6, 5651: 5,
             5499: 5, 5732: 4, 5813: 4, 4121: 4, 7011: 2, 5942: 2}  # fmt: skip
ONLINE_MCCS = {5999: 20, 5732: 12, 5691: 12, 5817: 12, 4722: 10, 5311: 10, 5942: 8, 4899: 8,
               5964: 8}  # fmt: skip
CARD_PRESENT_MODES: dict[int, int] = {EntryMode.CONTACTLESS: 50, EntryMode.CHIP: 40,
                                       EntryMode.MAGSTRIPE: 6, EntryMode.MANUAL: 4}  # fmt: skip

TERMINALS_PER_MERCHANT = 3
ONLINE_TERMINAL_SHARE = 0.02
ONLINE_PURCHASES_PER_SHOP_PURCHASE = 0.05
DOMESTIC_ONLINE_SHARE = 0.8


class _Streams(NamedTuple):
    """One generator per part, so that adding or tuning a part leaves the others' draws."""

    customers: np.random.Generator
    terminals: np.random.Generator
    transactions: np.random.Generator
    compromised_terminals: np.random.Generator
    compromised_cards: np.random.Generator
    merchants: np.random.Generator
    entry_modes: np.random.Generator
    online: np.random.Generator
    card_testing: np.random.Generator
    cnp_sprees: np.random.Generator

    @classmethod
    def spawn(cls, seed: int) -> _Streams:
        children = np.random.SeedSequence(seed).spawn(len(cls._fields))
        return cls(*(np.random.default_rng(child) for child in children))


def simulate(params: SimulationParams) -> pd.DataFrame:
    """The simulated transactions, sorted by time: columns `COLUMNS`, ids in time order."""
    streams = _Streams.spawn(params.seed)
    world = _world(params, streams)
    shop = _shop_rows(params, world, streams)
    flag_large_amounts(shop)
    compromise_terminals(shop, params, streams.compromised_terminals)
    compromise_cards(shop, params, streams.compromised_cards)
    parts = [shop]
    if params.profile == "extended":
        online = _online_rows(params, world, streams.online)
        flag_large_amounts(online)
        parts += [
            online,
            card_testing_rows(params, world, streams.card_testing),
            cnp_spree_rows(params, world, streams.cnp_sprees),
        ]
    return _frame(Rows.concat(parts), world, params)


def _world(params: SimulationParams, streams: _Streams) -> World:
    """The handbook's customers and terminals, plus merchants, countries and online terminals."""
    customer_xy = streams.customers.uniform(0, PLANE_SIZE, (params.customers, 2))
    mean_amount = streams.customers.uniform(5, 100, params.customers)
    tx_per_day = streams.customers.uniform(0, 4, params.customers)
    terminal_xy = streams.terminals.uniform(0, PLANE_SIZE, (params.terminals, 2))
    # A ball tree finds the neighbours without the customers x terminals distance matrix.
    graph = NearestNeighbors(radius=params.radius).fit(terminal_xy)
    neighbours = graph.radius_neighbors_graph(customer_xy, mode="connectivity")
    neighbours.sort_indices()
    online_count = max(len(COUNTRIES), round(ONLINE_TERMINAL_SHARE * params.terminals))
    shop_merchant, shop_mcc = _shop_merchants(params.terminals, streams.merchants)
    online_country, online_mcc = _online_terminals(online_count, streams.online)
    return World(
        mean_amount=mean_amount,
        tx_per_day=tx_per_day,
        home=_quadrant(customer_xy),
        neighbour_start=neighbours.indptr.astype(np.int64),
        neighbours=neighbours.indices.astype(np.int64),
        terminal_country=np.concatenate([_quadrant(terminal_xy), online_country]),
        terminal_merchant=np.concatenate([shop_merchant, len(shop_mcc) + np.arange(online_count)]),
        merchant_mcc=np.concatenate([shop_mcc, online_mcc]),
        plane_terminals=params.terminals,
    )


def _quadrant(xy: Floats) -> Ints:
    """The home country of each point of the plane (an index into `COUNTRIES`)."""
    east, north = (xy >= PLANE_SIZE / 2).astype(np.int64).T
    quadrant: Ints = 2 * north + east
    return quadrant


def _weighted(rng: np.random.Generator, weights: dict[int, int], size: int) -> Ints:
    """`size` keys of `weights` drawn with probabilities proportional to their values."""
    probabilities = np.array(list(weights.values()), dtype=np.float64)
    keys = np.array(list(weights), dtype=np.int64)
    return rng.choice(keys, size=size, p=probabilities / probabilities.sum())


def _shop_merchants(terminals: int, rng: np.random.Generator) -> tuple[Ints, Ints]:
    """Each terminal's merchant (every merchant has one at least) and each merchant's MCC."""
    merchants = -(-terminals // TERMINALS_PER_MERCHANT)
    extra = rng.integers(0, merchants, terminals - merchants)
    terminal_merchant = rng.permutation(np.concatenate([np.arange(merchants), extra]))
    return terminal_merchant, _weighted(rng, SHOP_MCCS, merchants)


def _online_terminals(count: int, rng: np.random.Generator) -> tuple[Ints, Ints]:
    """Each online terminal's country (every country has one at least) and MCC."""
    weights = np.array(ONLINE_COUNTRY_WEIGHTS)
    country = rng.choice(len(COUNTRIES), size=count, p=weights / weights.sum())
    country[: len(COUNTRIES)] = np.arange(len(COUNTRIES))
    return country, _weighted(rng, ONLINE_MCCS, count)


def _amounts(rng: np.random.Generator, mean: Floats) -> Floats:
    """Normal(mean, mean / 2) amounts; a negative draw becomes Uniform(0, 2 * mean)."""
    amount = rng.normal(mean, mean / 2)
    fallback = rng.uniform(0, 2 * mean)
    chosen: Floats = np.where(amount < 0, fallback, amount)
    return chosen.round(2)


def _daily_counts(rng: np.random.Generator, rate: Floats, days: int) -> tuple[Ints, Ints]:
    """Poisson purchase counts per customer and day, as one (customer, day) pair per purchase."""
    counts = rng.poisson(rate[:, None], (len(rate), days)).ravel()
    pairs = np.repeat(np.arange(counts.size), counts)
    return pairs // days, pairs % days


def _shop_rows(params: SimulationParams, world: World, streams: _Streams) -> Rows:
    """The handbook's purchases at the terminals near each customer, by customer then day."""
    rng = streams.transactions
    customer, day = _daily_counts(rng, world.tx_per_day, params.days)
    time_of_day = np.round(rng.normal(DAY / 2, 20_000, customer.size)).astype(np.int64)
    amount = _amounts(rng, world.mean_amount[customer])
    nearby = np.diff(world.neighbour_start)[customer]
    pick = np.floor(rng.random(customer.size) * nearby).astype(np.int64)
    keep = (time_of_day > 0) & (time_of_day < DAY) & (nearby > 0)
    terminal = world.neighbours[(world.neighbour_start[customer] + pick)[keep]]
    count = int(keep.sum())
    return Rows(
        customer=customer[keep],
        terminal=terminal,
        seconds=day[keep] * DAY + time_of_day[keep],
        amount=amount[keep],
        entry_mode=_weighted(streams.entry_modes, CARD_PRESENT_MODES, count),
        scenario=np.zeros(count, dtype=np.int64),
    )


def _online_rows(params: SimulationParams, world: World, rng: np.random.Generator) -> Rows:
    """Genuine online purchases, mostly from merchants of the home country.

    Unlike shop purchases they happen at any time of day, and every customer makes them,
    even one with no terminal nearby.
    """
    rate = world.tx_per_day * ONLINE_PURCHASES_PER_SHOP_PURCHASE
    customer, day = _daily_counts(rng, rate, params.days)
    seconds = day * DAY + rng.integers(0, DAY, customer.size)
    amount = _amounts(rng, world.mean_amount[customer])
    domestic = rng.random(customer.size) < DOMESTIC_ONLINE_SHARE
    home = world.home[customer]
    terminal = np.empty(customer.size, dtype=np.int64)
    for country in range(HOME_COUNTRIES):
        abroad = np.delete(np.arange(len(COUNTRIES)), country)
        for chosen, countries in ((domestic, [country]), (~domestic, abroad)):
            selected = (home == country) & chosen
            candidates = world.online_terminals(np.array(countries))
            terminal[selected] = rng.choice(candidates, selected.sum())
    entry_mode = np.full(customer.size, EntryMode.ECOMMERCE, dtype=np.int64)
    return Rows(customer, terminal, seconds, amount, entry_mode, np.zeros_like(customer))


def _frame(rows: Rows, world: World, params: SimulationParams) -> pd.DataFrame:
    """The output frame, sorted by time, then customer, then generation order."""
    order = np.lexsort((rows.customer, rows.seconds))
    terminal = rows.terminal[order]
    merchant = world.terminal_merchant[terminal]
    country = world.terminal_country[terminal]
    entry_mode = rows.entry_mode[order]
    scenario = rows.scenario[order].astype(np.int8)
    start = np.datetime64(params.start_date, "ns")
    timestamp = pd.DatetimeIndex(start + rows.seconds[order].astype("timedelta64[s]"))
    # EntryMode values run from 0 without gaps, so a value is its name's position.
    mode_names = [mode.name.lower() for mode in EntryMode]
    columns = {
        "transaction_id": _ids("tx", len(order), 10),
        "timestamp": timestamp.tz_localize("UTC"),
        "card_id": _ids("card", params.customers, 6).take(rows.customer[order]),
        "terminal_id": _ids("term", len(world.terminal_country), 5).take(terminal),
        "amount": rows.amount[order],
        "is_fraud": (scenario > 0).astype(np.int8),
        "merchant_id": _ids("merch", len(world.merchant_mcc), 5).take(merchant),
        "mcc": world.merchant_mcc[merchant].astype(np.int16),
        "entry_mode": pd.array(mode_names, dtype="str").take(entry_mode),
        "card_present": entry_mode != EntryMode.ECOMMERCE,
        "currency": pd.array(CURRENCIES, dtype="str").take(country),
        "country": pd.array(COUNTRIES, dtype="str").take(country),
        "fraud_scenario": scenario,
    }
    return pd.DataFrame(columns)


def _ids(prefix: str, count: int, min_digits: int) -> pd.api.extensions.ExtensionArray:
    """`prefix` and zero-padded numbers 0 to count - 1, one width, so text order is numeric."""
    digits = max(min_digits, len(str(count - 1)))
    numbers = pa.array(np.arange(count)).cast(pa.string())
    padded = pc.utf8_lpad(numbers, width=digits, padding="0")
    ids: pd.api.extensions.ExtensionArray = pd.array(
        pc.binary_join_element_wise(prefix, padded, ""), dtype="str"
    )
    return ids
