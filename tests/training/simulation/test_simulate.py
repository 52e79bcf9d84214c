"""Tests for the transaction simulator: reproducibility, schema, fraud scenarios, files."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from service.core.domain import EntryMode
from training.simulation.fraud_patterns import _window_mask
from training.simulation.history_files import write_transactions
from training.simulation.params import SimulationParams
from training.simulation.simulate import COLUMNS, simulate

SMALL = SimulationParams(customers=200, terminals=400, days=30, start_date=date(2020, 2, 1))
ISO_UTC = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return simulate(SMALL)


@pytest.fixture(scope="module")
def handbook() -> pd.DataFrame:
    return simulate(SMALL.model_copy(update={"profile": "handbook"}))


def scenario(frame: pd.DataFrame, number: int) -> pd.DataFrame:
    return frame[frame["fraud_scenario"] == number]


def test_same_seed_gives_identical_frame(frame):
    """Simulating twice with the same parameters gives the same frame."""
    pd.testing.assert_frame_equal(simulate(SMALL), frame)


def test_another_seed_gives_another_frame(frame):
    """Another seed gives other transactions."""
    other = simulate(SMALL.model_copy(update={"seed": 1}))
    assert not other["amount"].head(100).equals(frame["amount"].head(100))


def test_columns_and_dtypes(frame):
    """The frame has exactly the documented columns, in order, with their dtypes."""
    expected = {
        "transaction_id": "str",
        "timestamp": "datetime64[ns, UTC]",
        "card_id": "str",
        "terminal_id": "str",
        "amount": "float64",
        "is_fraud": "int8",
        "merchant_id": "str",
        "mcc": "int16",
        "entry_mode": "str",
        "card_present": "bool",
        "currency": "str",
        "country": "str",
        "fraud_scenario": "int8",
    }
    assert tuple(frame.columns) == COLUMNS
    assert frame.dtypes.astype(str).to_dict() == expected


def test_ids_are_unique_zero_padded_and_in_time_order(frame):
    """Transaction ids are unique and sort as the rows do, which is time order."""
    assert frame["transaction_id"].is_unique
    assert frame["transaction_id"].str.fullmatch(r"tx\d{10}").all()
    assert frame["transaction_id"].is_monotonic_increasing
    assert frame["timestamp"].is_monotonic_increasing
    assert frame["card_id"].str.fullmatch(r"card\d{6}").all()
    assert frame["terminal_id"].str.fullmatch(r"term\d{5}").all()


def test_timestamps_are_whole_seconds_inside_the_period(frame):
    """Every timestamp is a whole second within the simulated days."""
    start = pd.Timestamp(SMALL.start_date, tz="UTC")
    assert frame["timestamp"].min() >= start
    assert frame["timestamp"].max() < start + pd.Timedelta(days=SMALL.days)
    assert (frame["timestamp"] == frame["timestamp"].dt.floor("s")).all()


def test_amounts_are_non_negative_with_two_decimals(frame):
    """Amounts are at least zero and whole cents."""
    cents = frame["amount"] * 100
    assert (frame["amount"] >= 0).all()
    assert np.allclose(cents, cents.round(), rtol=0, atol=1e-6)


def test_optional_fields_are_consistent(frame):
    """Entry modes are EntryMode names, card-present unless online, currency from country."""
    modes = {mode.name.lower() for mode in EntryMode} - {"unknown"}
    assert set(frame["entry_mode"]) <= modes
    assert (frame["card_present"] == (frame["entry_mode"] != "ecommerce")).all()
    assert frame.groupby("country")["currency"].nunique().max() == 1
    assert frame.groupby("terminal_id")["merchant_id"].nunique().max() == 1
    assert frame.groupby("merchant_id")["mcc"].nunique().max() == 1
    assert frame["mcc"].between(1000, 9999).all()


def test_is_fraud_is_any_scenario_and_every_scenario_occurs(frame):
    """is_fraud is 1 exactly for a non-zero scenario; the extended profile has all six."""
    assert (frame["is_fraud"] == (frame["fraud_scenario"] > 0)).all()
    assert set(frame["fraud_scenario"]) == {0, 1, 2, 3, 4, 5}


def test_scenario_1_is_exactly_amounts_above_220(frame):
    """Outside other scenarios, a row is a scenario 1 fraud exactly when its amount is > 220."""
    rows = frame[frame["fraud_scenario"] <= 1]
    assert ((rows["fraud_scenario"] == 1) == (rows["amount"] > 220)).all()


def test_scenario_2_takes_whole_days_at_shop_terminals(frame):
    """Compromised terminals are on the plane, and all their purchases that day are fraud."""
    assert scenario(frame, 2)["card_present"].all()
    dated = frame.assign(day=frame["timestamp"].dt.date)
    compromised = scenario(dated, 2)[["terminal_id", "day"]].drop_duplicates()
    same_days = dated.merge(compromised, on=["terminal_id", "day"])
    assert len(compromised) > 0
    assert same_days["fraud_scenario"].isin([2, 3]).all()


def test_window_mask_opens_windows_of_the_given_length():
    """A pick opens a window from its day for `length` days, cut at the last day."""
    picks = np.array([[1], [3], [1], [3], [3]])
    mask = _window_mask(picks, population=4, length=2)
    assert mask[1].tolist() == [True, True, True, True, False]
    assert mask[3].tolist() == [False, True, True, True, True]
    assert not mask[[0, 2]].any()


def test_scenario_3_multiplies_amounts_by_five(frame):
    """Scenario 3 rows are the same purchases as without it, at five times the amount."""
    without = simulate(SMALL.model_copy(update={"compromised_cards_per_day": 0}))
    assert (without["transaction_id"] == frame["transaction_id"]).all()
    changed = frame["fraud_scenario"] == 3
    assert changed.sum() > 0
    before = without["amount"][changed]
    assert np.allclose(frame["amount"][changed], (before * 5).round(2), rtol=0, atol=1e-9)
    assert (frame["amount"][~changed] == without["amount"][~changed]).all()


def test_card_testing_is_tiny_online_payments_then_large_ones(frame):
    """Each test is 3-8 payments of at most 2.00 at one site within minutes, then 1-2 large."""
    tests = scenario(frame, 4)
    assert not tests["card_present"].any()
    for _, burst in tests.groupby(["card_id", tests["timestamp"].dt.date]):
        tiny = burst[burst["amount"] <= 2]
        large = burst[burst["amount"] > 2]
        assert 3 <= len(tiny) <= 8
        assert tiny["terminal_id"].nunique() == 1
        assert tiny["timestamp"].max() - tiny["timestamp"].min() <= pd.Timedelta(minutes=8)
        assert 1 <= len(large) <= 2
        assert (large["amount"] >= 250).all()
        assert large["timestamp"].min() > tiny["timestamp"].max()
        assert large["timestamp"].max() - tiny["timestamp"].max() <= pd.Timedelta(hours=5)


def test_cnp_spree_is_online_purchases_abroad_within_hours(frame):
    """A spree is 3-6 card-not-present purchases in one foreign country within 3 hours."""
    sprees = scenario(frame, 5)
    home_countries = set(frame.loc[frame["card_present"], "country"])
    assert not sprees["card_present"].any()
    assert not sprees["country"].isin(home_countries).any()
    for _, spree in sprees.groupby(["card_id", sprees["timestamp"].dt.date]):
        assert 3 <= len(spree) <= 6
        assert spree["country"].nunique() == 1
        assert spree["timestamp"].max() - spree["timestamp"].min() < pd.Timedelta(hours=3)


def test_handbook_profile_is_the_extended_profiles_card_present_part(frame, handbook):
    """The handbook profile has scenarios 0-3 only and the extended profile's shop rows."""
    assert set(handbook["fraud_scenario"]) == {0, 1, 2, 3}
    shop = frame[frame["card_present"]].reset_index(drop=True)
    columns = [column for column in COLUMNS if column != "transaction_id"]
    pd.testing.assert_frame_equal(shop[columns], handbook[columns])


def test_fraud_rate_near_one_percent_at_a_moderate_size():
    """With the default population over a month, about 1% of transactions are fraud."""
    frame = simulate(SimulationParams(days=30))
    assert 0.004 < frame["is_fraud"].mean() < 0.015


def test_params_are_validated_and_frozen():
    """Counts must be positive and daily picks fit the population; params cannot change."""
    with pytest.raises(ValidationError):
        SimulationParams(customers=0)
    with pytest.raises(ValidationError):
        SimulationParams(terminals=3, compromised_terminals_per_day=4)
    with pytest.raises(ValidationError):
        SimulationParams(customers=2, cnp_sprees_per_day=3)
    with pytest.raises(ValidationError):
        SMALL.seed = 3  # type: ignore[misc]


def test_csv_round_trip(frame, tmp_path):
    """CSV has ISO-8601 UTC timestamps and 2-decimal amounts, and reads back the same."""
    path = tmp_path / "transactions.csv"
    write_transactions(frame, path)
    text = pd.read_csv(path, dtype=str)
    assert text["timestamp"].str.fullmatch(ISO_UTC).all()
    assert text["amount"].str.fullmatch(r"\d+\.\d{2}").all()
    back = pd.read_csv(path)
    back["timestamp"] = pd.to_datetime(back["timestamp"], utc=True).dt.as_unit("ns")
    pd.testing.assert_frame_equal(back.astype(frame.dtypes.to_dict()), frame)


def test_parquet_round_trip_keeps_types(frame, tmp_path):
    """Parquet reads back identical, timestamp type included."""
    path = tmp_path / "transactions.parquet"
    write_transactions(frame, path)
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)


@pytest.mark.parametrize(
    ("suffix", "column", "value"),
    [
        (".csv", "card_id", "card,0"),  # fails mid-file: a comma cannot be written unquoted
        (".parquet", "mcc", "not a number"),  # fails converting a mixed column
    ],
)
def test_failed_write_leaves_no_file_under_the_name(frame, tmp_path, suffix, column, value):
    """A write that fails keeps the previous file and leaves no partial one behind."""
    path = tmp_path / f"transactions{suffix}"
    path.write_text("previous")
    broken = frame.head(20).astype({column: object})
    broken.loc[broken.index[-1], column] = value
    with pytest.raises(pa.ArrowException):
        write_transactions(broken, path)
    assert path.read_text() == "previous"
    assert list(tmp_path.iterdir()) == [path]


def test_write_creates_the_file_when_absent(frame, tmp_path):
    """A successful write leaves exactly the named file."""
    path = tmp_path / "transactions.csv"
    write_transactions(frame.head(5), path)
    assert list(tmp_path.iterdir()) == [path]
