"""Traffic from a history: rows to requests, run-id prefixes, outcome reports mixed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from benchmarks.load.history_requests import amount_minor, request_from_row
from benchmarks.load.traffic import (
    NO_OUTCOMES,
    Call,
    CallKind,
    OutcomeMix,
    build_calls,
    load_history,
    new_run_id,
)
from service.grpc_api._proto.fraud.v1 import scoring_pb2

HEADER = (
    "transaction_id,timestamp,card_id,terminal_id,amount,is_fraud,merchant_id,mcc,"
    "entry_mode,card_present,currency,country,fraud_scenario\n"
)
START = datetime(2018, 4, 1, tzinfo=UTC)
ROW = "tx01,2018-04-01T00:00:35Z,card04,term05,61.28,0,merch02,5311,contactless,true,CHF,CH,0\n"


def _history_file(tmp_path: Path, frauds: set[int], rows: int = 10) -> Path:
    """`rows` rows, tx00, tx01, ... one minute apart; the rows in `frauds` labelled fraud."""
    lines = [HEADER]
    for i in range(rows):
        label = "1" if i in frauds else "0"
        moment = (START + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(
            f"tx{i:02d},{moment},card{i % 3},term{i % 4},10.00,{label},m1,5411,chip,true,EUR,FR,0\n"
        )
    path = tmp_path / "history.csv"
    path.write_text("".join(lines))
    return path


def _decoded(calls: list[Call]) -> list[tuple[CallKind, str]]:
    """Each call's kind and transaction id."""
    decoded = []
    for call in calls:
        if call.kind is CallKind.SCORE:
            transaction_id = scoring_pb2.ScoreRequest.FromString(
                call.payload
            ).transaction.transaction_id
        else:
            transaction_id = scoring_pb2.OutcomeRequest.FromString(call.payload).transaction_id
        decoded.append((call.kind, transaction_id))
    return decoded


def test_row_becomes_a_complete_score_request():
    """Every column of a simulated history row lands in its Transaction field."""
    values = dict(zip(HEADER.strip().split(","), ROW.strip().split(","), strict=True))

    request = request_from_row(values)

    assert request.transaction == scoring_pb2.Transaction(
        transaction_id="tx01",
        card_id="card04",
        terminal_id="term05",
        merchant_id="merch02",
        amount_minor=6128,
        currency="CHF",
        timestamp=Timestamp(seconds=1_522_540_835),
        mcc=5311,
        entry_mode=scoring_pb2.ENTRY_MODE_CONTACTLESS,
        card_present=True,
        country="CH",
    )


@pytest.mark.parametrize(
    ("text", "currency", "expected"),
    [("61.28", "EUR", 6128), ("8.7", "EUR", 870), ("1250", "JPY", 1250), ("1.005", "KWD", 1005)],
)
def test_amount_scales_by_the_currency_exponent(text: str, currency: str, expected: int):
    """Major-unit text becomes exact minor units for 0, 2 and 3 decimal currencies."""
    assert amount_minor(text, currency) == expected


@pytest.mark.parametrize(("text", "currency"), [("1.5", "JPY"), ("1.00", "XYZ")])
def test_amount_that_cannot_be_exact_is_refused(text: str, currency: str):
    """Too many decimals for the currency, or an unknown currency, raise ValueError."""
    with pytest.raises(ValueError, match=currency):
        amount_minor(text, currency)


def test_history_loads_the_rows_asked_for_and_refuses_a_short_file(tmp_path: Path):
    """Rows skip to skip + count are read with their labels; more than the file holds fails."""
    history = load_history(_history_file(tmp_path, frauds={3}), count=4, skip=2)

    assert [r.transaction.transaction_id for r in history.requests] == [
        "tx02",
        "tx03",
        "tx04",
        "tx05",
    ]
    assert history.is_fraud.tolist() == [False, True, False, False]
    with pytest.raises(ValueError, match="10 rows"):
        load_history(_history_file(tmp_path, frauds=set()), count=9, skip=2)


def test_calls_carry_the_run_id_and_keep_the_history_order(tmp_path: Path):
    """One Score per row, in order, each transaction id prefixed by the run id."""
    history = load_history(_history_file(tmp_path, frauds=set()), 10)

    calls = build_calls(history, "run7", NO_OUTCOMES, start=2, count=3)

    assert _decoded(calls) == [(CallKind.SCORE, f"run7-tx{i:02d}") for i in (2, 3, 4)]


def test_fraud_outcomes_follow_their_swipe_by_the_lag_at_the_history_time_then(tmp_path: Path):
    """A fraud's report comes right after the swipe `lag` rows later, reported at its time."""
    history = load_history(_history_file(tmp_path, frauds={1, 8}), 10)

    calls = build_calls(history, "r", OutcomeMix(share=1.0, lag=3))

    decoded = _decoded(calls)
    assert (
        decoded.index((CallKind.OUTCOME, "r-tx01")) == decoded.index((CallKind.SCORE, "r-tx04")) + 1
    )
    assert (CallKind.OUTCOME, "r-tx08") not in decoded  # its report would fall after the run
    outcome = scoring_pb2.OutcomeRequest.FromString(calls[5].payload)
    assert outcome.is_fraud
    assert outcome.reported_at == history.requests[4].transaction.timestamp


def test_the_outcome_share_picks_that_share_of_the_frauds(tmp_path: Path):
    """Share 0 reports none, share 1 all; a share in between about that share, seeded."""
    frauds = set(range(0, 400, 2))
    history = load_history(_history_file(tmp_path, frauds=frauds, rows=400), 400)

    def reported(share: float) -> int:
        calls = build_calls(history, "r", OutcomeMix(share=share, lag=1, seed=5))
        return sum(call.kind is CallKind.OUTCOME for call in calls)

    assert reported(0.0) == 0
    assert reported(1.0) == 200
    assert 70 <= reported(0.5) <= 130


def test_rows_outside_the_history_are_refused(tmp_path: Path):
    """A slice past the end of the history is an error, not a short run."""
    history = load_history(_history_file(tmp_path, frauds=set()), 10)

    with pytest.raises(ValueError, match="not in a history of 10"):
        build_calls(history, "r", NO_OUTCOMES, start=8, count=5)


@pytest.mark.parametrize(("share", "lag"), [(1.5, 10), (-0.1, 10), (0.5, 0)])
def test_an_outcome_mix_out_of_bounds_is_refused(share: float, lag: int):
    """The share must be a share and the lag at least one call."""
    with pytest.raises(ValueError, match="share"):
        OutcomeMix(share=share, lag=lag)


def test_run_ids_differ_between_runs():
    """Two runs never share transaction ids by default."""
    assert len({new_run_id() for _ in range(100)}) == 100
