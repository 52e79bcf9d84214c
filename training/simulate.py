"""A seeded card-transaction simulator after the design of the Fraud Detection Handbook.

Le Borgne et al., "Reproducible Machine Learning for Credit Card Fraud Detection - Practical
Handbook", chapter 3.2, scatter customers and terminals on a 100 x 100 plane; each customer
buys at the terminals within a radius of it. This module implements that design from its
description (profile "handbook") and by default (profile "extended") adds merchants, merchant
category codes, entry modes, countries, online terminals and two fraud patterns the handbook
lacks. The `fraud_scenario` column says which scenario made each fraud:

    0  genuine
    1  amount above 220
    2  compromised terminal: every purchase there for 28 days
    3  compromised card: a third of its purchases for 14 days, at five times the amount
    4  card testing: a burst of tiny online payments, then one or two large ones
    5  card-not-present spree: several online purchases abroad within a few hours

Scenarios 2 and 3 act on the handbook's purchases, all card-present. Every part draws from
its own generator spawned from one SeedSequence, so the extended profile keeps the handbook
profile's rows exactly (they are its card-present rows) and adds online ones.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import date
from pathlib import Path
from typing import Literal, NamedTuple, Self

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.neighbors import NearestNeighbors

from service.domain import EntryMode

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

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

DAY = 86_400
HOUR = 3_600
PLANE_SIZE = 100.0
FRAUD_AMOUNT_THRESHOLD = 220.0
TERMINAL_COMPROMISE_DAYS = 28
CARD_COMPROMISE_DAYS = 14
CARD_COMPROMISE_FACTOR = 5

# The plane's quadrants are the home countries (index 2 * north + east); the rest exist
# only online, so a purchase there is abroad for every card.
COUNTRIES = ("FR", "CH", "GB", "DE", "IE", "NL", "US", "CN")
CURRENCIES = ("EUR", "CHF", "GBP", "EUR", "EUR", "EUR", "USD", "CNY")
HOME_COUNTRIES = 4
ONLINE_COUNTRY_WEIGHTS = (0.2, 0.1, 0.2, 0.2, 0.1, 0.08, 0.1, 0.02)

SHOP_MCCS = {5411: 22, 5812: 14, 5814: 10, 5541: 10, 5912: 6, 5311: 6, 5999: 6, 5651: 5,
             5499: 5, 5732: 4, 5813: 4, 4121: 4, 7011: 2, 5942: 2}  # fmt: skip
ONLINE_MCCS = {5999: 20, 5732: 12, 5691: 12, 5817: 12, 4722: 10, 5311: 10, 5942: 8, 4899: 8,
               5964: 8}  # fmt: skip
CARD_PRESENT_MODES: dict[int, int] = {EntryMode.CONTACTLESS: 50, EntryMode.CHIP: 40,
                                       EntryMode.MAGSTRIPE: 6, EntryMode.MANUAL: 4}  # fmt: skip

TERMINALS_PER_MERCHANT = 3
ONLINE_TERMINAL_SHARE = 0.02
ONLINE_PURCHASES_PER_SHOP_PURCHASE = 0.15
DOMESTIC_ONLINE_SHARE = 0.8


class SimulationParams(BaseModel):
    """What to simulate.

    The defaults give about 1.78 million shop purchases (the handbook profile, 0.8% fraud);
    the extended profile adds about 0.28 million online ones and brings fraud to 0.9%.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    customers: int = Field(default=5_000, gt=0)
    """Number of cards."""
    terminals: int = Field(default=10_000, gt=0)
    """Number of terminals on the plane; online terminals come on top (about 2%)."""
    days: int = Field(default=183, gt=0)
    """Length of the simulated period."""
    start_date: date = date(2018, 4, 1)
    """First day, starting at midnight UTC."""
    seed: int = Field(default=0, ge=0)
    """Seed of every random draw: the same parameters give the same frame."""
    radius: float = Field(default=5.0, gt=0)
    """A customer buys at the terminals within this distance of it."""
    profile: Literal["extended", "handbook"] = "extended"
    """"handbook": the handbook's design only; "extended": plus online purchases, scenarios 4-5."""
    compromised_terminals_per_day: int = Field(default=2, ge=0)
    """Scenario 2: terminals compromised each day, for 28 days."""
    compromised_cards_per_day: int = Field(default=3, ge=0)
    """Scenario 3: cards compromised each day, for 14 days."""
    card_testing_per_day: int = Field(default=2, ge=0)
    """Scenario 4: cards tested then cashed out each day (extended profile)."""
    cnp_sprees_per_day: int = Field(default=2, ge=0)
    """Scenario 5: cards used for an online spree abroad each day (extended profile)."""

    @model_validator(mode="after")
    def _daily_draws_fit(self) -> Self:
        """Each day's compromised entities are distinct, so there must be enough of them."""
        if self.compromised_terminals_per_day > self.terminals:
            raise ValueError("compromised_terminals_per_day exceeds terminals")
        per_day = (self.compromised_cards_per_day, self.card_testing_per_day,
                   self.cnp_sprees_per_day)  # fmt: skip
        if max(per_day) > self.customers:
            raise ValueError("cards compromised per day exceed customers")
        return self


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


@dataclass(frozen=True)
class _World:
    """Customers and terminals; online terminals are numbered after the plane's."""

    mean_amount: Floats
    tx_per_day: Floats
    home: Ints
    neighbour_start: Ints
    neighbours: Ints
    terminal_country: Ints
    terminal_merchant: Ints
    merchant_mcc: Ints
    plane_terminals: int

    def online_terminals(self, countries: Ints) -> Ints:
        """The online terminals located in any of `countries`."""
        online = np.arange(self.plane_terminals, len(self.terminal_country))
        return online[np.isin(self.terminal_country[online], countries)]


@dataclass(frozen=True)
class _Rows:
    """Transactions under construction, one array per field, in generation order."""

    customer: Ints
    terminal: Ints
    seconds: Ints
    amount: Floats
    entry_mode: Ints
    scenario: Ints

    @classmethod
    def concat(cls, parts: list[_Rows]) -> _Rows:
        """`parts` end to end; no parts gives no rows."""
        none = np.empty(0, dtype=np.int64)
        parts = [cls(none, none, none, none.astype(np.float64), none, none), *parts]
        names = [field.name for field in fields(cls)]
        return cls(*(np.concatenate([getattr(part, name) for part in parts]) for name in names))


def simulate(params: SimulationParams) -> pd.DataFrame:
    """The simulated transactions, sorted by time: columns `COLUMNS`, ids in time order."""
    streams = _Streams.spawn(params.seed)
    world = _world(params, streams)
    shop = _shop_rows(params, world, streams)
    _flag_large_amounts(shop)
    _compromise_terminals(shop, params, streams.compromised_terminals)
    _compromise_cards(shop, params, streams.compromised_cards)
    parts = [shop]
    if params.profile == "extended":
        online = _online_rows(params, world, streams.online)
        _flag_large_amounts(online)
        parts += [
            online,
            _card_testing_rows(params, world, streams.card_testing),
            _cnp_spree_rows(params, world, streams.cnp_sprees),
        ]
    return _frame(_Rows.concat(parts), world, params)


def _world(params: SimulationParams, streams: _Streams) -> _World:
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
    return _World(
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


def _shop_rows(params: SimulationParams, world: _World, streams: _Streams) -> _Rows:
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
    return _Rows(
        customer=customer[keep],
        terminal=terminal,
        seconds=day[keep] * DAY + time_of_day[keep],
        amount=amount[keep],
        entry_mode=_weighted(streams.entry_modes, CARD_PRESENT_MODES, count),
        scenario=np.zeros(count, dtype=np.int64),
    )


def _flag_large_amounts(rows: _Rows) -> None:
    """Scenario 1: every amount above the threshold is fraud."""
    rows.scenario[rows.amount > FRAUD_AMOUNT_THRESHOLD] = 1


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


def _compromise_terminals(rows: _Rows, params: SimulationParams, rng: np.random.Generator) -> None:
    """Scenario 2: every purchase at a compromised terminal during its window is fraud."""
    picks = _daily_picks(rng, params.terminals, params.compromised_terminals_per_day, params.days)
    mask = _window_mask(picks, params.terminals, TERMINAL_COMPROMISE_DAYS)
    rows.scenario[mask[rows.terminal, rows.seconds // DAY]] = 2


def _compromise_cards(rows: _Rows, params: SimulationParams, rng: np.random.Generator) -> None:
    """Scenario 3: a third of the compromised cards' purchases in the window, amount x 5.

    Unlike the handbook, a purchase is multiplied once only, even when windows overlap.
    `rows` must be ordered by customer then day, as `_shop_rows` makes them.
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


def _online_rows(params: SimulationParams, world: _World, rng: np.random.Generator) -> _Rows:
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
    return _Rows(customer, terminal, seconds, amount, entry_mode, np.zeros_like(customer))


def _card_testing_rows(params: SimulationParams, world: _World, rng: np.random.Generator) -> _Rows:
    """Scenario 4: for a few cards a day, tiny online payments, then large ones."""
    online = world.online_terminals(np.arange(len(COUNTRIES)))
    picks = _daily_picks(rng, params.customers, params.card_testing_per_day, params.days)
    return _Rows.concat(
        [_card_test(rng, card, day, online) for day, cards in enumerate(picks) for card in cards]
    )


def _card_test(rng: np.random.Generator, card: int, day: int, online: Ints) -> _Rows:
    """3-8 payments of 0.10-2.00 at one site seconds apart, then 1-2 large ones within hours."""
    tests, cashouts = int(rng.integers(3, 9)), int(rng.integers(1, 3))
    start = day * DAY + rng.integers(0, DAY - 6 * HOUR)
    test_times = start + np.cumsum(rng.integers(5, 61, tests))
    cashout_times = test_times[-1] + np.sort(rng.integers(HOUR // 2, 5 * HOUR, cashouts))
    amounts = [rng.uniform(0.10, 2.00, tests), rng.uniform(250, 1500, cashouts)]
    terminals = [np.repeat(rng.choice(online), tests), rng.choice(online, cashouts)]
    seconds = np.concatenate([test_times, cashout_times])
    return _fraud_rows(card, np.concatenate(terminals), seconds, np.concatenate(amounts), 4)


def _cnp_spree_rows(params: SimulationParams, world: _World, rng: np.random.Generator) -> _Rows:
    """Scenario 5: for a few cards a day, an online spree abroad."""
    picks = _daily_picks(rng, params.customers, params.cnp_sprees_per_day, params.days)
    return _Rows.concat(
        [_cnp_spree(rng, card, day, world) for day, cards in enumerate(picks) for card in cards]
    )


def _cnp_spree(rng: np.random.Generator, card: int, day: int, world: _World) -> _Rows:
    """3-6 purchases within three hours at online merchants of one country.

    The country is nobody's home, so the spree is abroad whatever the card.
    """
    country = rng.integers(HOME_COUNTRIES, len(COUNTRIES))
    purchases = int(rng.integers(3, 7))
    start = day * DAY + rng.integers(0, DAY - 4 * HOUR)
    seconds = start + np.sort(rng.integers(0, 3 * HOUR, purchases))
    terminal = rng.choice(world.online_terminals(np.array([country])), purchases)
    return _fraud_rows(card, terminal, seconds, rng.uniform(30, 600, purchases), 5)


def _fraud_rows(card: int, terminal: Ints, seconds: Ints, amount: Floats, scenario: int) -> _Rows:
    """Online fraudulent purchases made with one card."""
    count = len(terminal)
    return _Rows(
        customer=np.full(count, card, dtype=np.int64),
        terminal=terminal,
        seconds=seconds,
        amount=np.round(amount, 2),
        entry_mode=np.full(count, EntryMode.ECOMMERCE, dtype=np.int64),
        scenario=np.full(count, scenario, dtype=np.int64),
    )


def _frame(rows: _Rows, world: _World, params: SimulationParams) -> pd.DataFrame:
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


def write_transactions(frame: pd.DataFrame, path: Path) -> None:
    """Write a simulated frame to `path`: Parquet if its suffix is ".parquet", else CSV.

    CSV timestamps are ISO 8601 in UTC ("2018-04-01T00:07:56Z") and amounts have two
    decimals; Parquet keeps the column types. The file is written under a temporary name in
    the same directory and renamed when complete, so `path` never holds a partial file.
    """
    write = _write_parquet if path.suffix == ".parquet" else _write_csv
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        write(frame, temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    frame.to_parquet(path, index=False)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    timestamps = frame["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    table = pa.Table.from_pandas(frame.drop(columns=["timestamp", "amount"]), preserve_index=False)
    iso_times = np.datetime_as_string(timestamps, unit="s", timezone="UTC")
    # A decimal column prints its two decimals, where a float prints its shortest form.
    cents = pa.array(frame["amount"].to_numpy()).cast(pa.decimal128(18, 2))
    table = table.append_column("timestamp", pa.array(iso_times)).append_column("amount", cents)
    table = table.select(list(frame.columns))
    with path.open("wb") as sink:
        sink.write((",".join(table.column_names) + "\n").encode())
        options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
        pa_csv.write_csv(table, sink, options)
