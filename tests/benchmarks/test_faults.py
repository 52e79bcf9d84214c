"""`fraud-bench fuzz`, `reloads`, `chaos` and `soak` with short settings against real
servers: each writes its criteria, and the exit status follows them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.cli import main
from benchmarks.faults.answers import stale_answers
from benchmarks.faults.chaos import _overlapping_entities, _shared_state_order
from benchmarks.faults.criteria import Scenario, equal, not_judged
from benchmarks.faults.driver import Record, Schedule
from benchmarks.load.traffic import Call, CallKind
from service.grpc_api._proto.fraud.v1 import scoring_pb2
from tests.conftest import TrainedModel


def _run(arguments: list[str], model: TrainedModel, out: Path) -> tuple[int, dict[str, Any]]:
    common = ["--registry", str(model.registry), "--data", str(model.history), "--out", str(out)]
    status = main([*arguments, *common])
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert status == (0 if report["passed"] else 1)
    return status, report


def _criteria(report: dict[str, Any], scenario: str) -> dict[str, bool | None]:
    (found,) = [s for s in report["scenarios"] if s["name"] == scenario]
    return {criterion["name"]: criterion["passed"] for criterion in found["criteria"]}


def test_fuzz_sends_every_method_and_judges_the_answers(
    trained_model: TrainedModel, tmp_path: Path
):
    _status, report = _run(["fuzz", "--count", "400", "--seed", "3"], trained_model, tmp_path)

    (scenario,) = report["scenarios"]
    statuses = scenario["figures"]["statuses"]
    assert sum(statuses.values()) == 400
    methods = {name.split()[0] for name in statuses}
    assert {"Score", "ScoreStream", "ReportOutcome", "GetModelInfo", "ListModels"} <= methods
    assert statuses.get("Score INVALID_ARGUMENT", 0) > 0  # hostile fields were refused
    criteria = _criteria(report, "fuzz")
    assert criteria["no crash: running after, exit 0 on SIGTERM"] is True
    assert criteria["every score finite and in [0, 1]"] is True
    assert criteria["healthy after: SERVING, a valid Score answered by the model"] is True
    # Streams ended on a bad transaction included: the client reads the server's status.
    assert criteria["only documented status codes"] is True, scenario["figures"]["examples"]
    assert (tmp_path / "fuzz.png").stat().st_size > 0


def test_reloads_under_load_answer_each_promoted_version(
    trained_model: TrainedModel, tmp_path: Path
):
    arguments = ["reloads", "--promotions", "2", "--every", "0.5", "--rate", "100"]

    status, report = _run(arguments, trained_model, tmp_path)

    assert status == 0, report["scenarios"]
    assert report["scenarios"][0]["figures"]["promotions_answered"] == 2


def test_chaos_kill_and_disk_full_are_judged(trained_model: TrainedModel, tmp_path: Path):
    """The two scenarios with the most machinery (a restart on the same state and an
    uninterrupted server to compare with; a tmpfs in a namespace of its own). Every other
    scenario has a short run of its own below."""
    arguments = ["chaos", "--scenario", "kill", "disk", "--rate", "60", "--seconds", "1"]

    _status, report = _run(arguments, trained_model, tmp_path)

    assert [s["name"] for s in report["scenarios"]] == ["kill", "disk"]
    kill = _criteria(report, "kill")
    missing = "acknowledged outcomes missing from the outcome log: only those acknowledged "
    assert kill[missing + "within its flush interval before the kill"] is True
    assert kill["outage within the restart time + 1 s"] is True
    disk = _criteria(report, "disk")
    assert disk["no call fails (outcomes NOT_FOUND aside)"] is True
    assert disk["decision records dropped while full (counted)"] is True
    assert disk["records written again after space returns"] is True


def test_chaos_rolling_fails_no_call_and_keeps_every_score(
    trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Three replicas on one redis-server rolled under the open loop (the saturation given,
    not measured, to keep it short): every criterion holds (no call fails, every replica
    exits 0, every answer from the model and scoring as the uninterrupted reference's),
    and every answer was compared."""
    # Generous, as in tests/test_replicas.py: on a busy machine the default budget (20 ms)
    # and wait for each Redis reply (10 ms) run out, and a fallback would prove nothing.
    monkeypatch.setenv("FRAUD_BUDGET__SERVER_BUDGET_MS", "60000")
    monkeypatch.setenv("FRAUD_STATE__TIMEOUT_SECONDS", "5")
    arguments = ["chaos", "--scenario", "rolling", "--saturation", "120", "--seconds", "3"]

    status, report = _run(arguments, trained_model, tmp_path)

    assert status == 0, report["scenarios"][0]["criteria"]
    rolling = _criteria(report, "rolling")
    exact = "scores stay exact: every answer = an uninterrupted server's fed the same "
    assert rolling[exact + "swipes in the order the shared state took them"] is True
    figures = report["scenarios"][0]["figures"]
    assert figures["compared_answers"] == figures["answers"] > 0


def test_chaos_store_outage_is_answered_by_the_fallback_and_the_model_returns(
    trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """redis-server killed for 1 s under load and started again (empty): no call fails,
    answers during the outage are fallbacks (none an error), and the model answers again,
    with no state_unavailable fallback 2 s after the return. The two timed criteria (p99
    during the outage within the 20 ms budget, the model back within 2 s) are the recorded
    runs' on a quiet box (benchmarks/RESULTS.md): here only that they were measured."""
    # Redis down is refused at once whatever the wait for a reply; the default wait (10 ms)
    # runs out on a busy machine (Timeout reading, in the second after the return, in one
    # run of three at load 4-5) and such a fallback would prove nothing.
    monkeypatch.setenv("FRAUD_STATE__TIMEOUT_SECONDS", "1")
    arguments = ["chaos", "--scenario", "store", "--rate", "60", "--seconds", "2.5"]
    arguments += ["--store-outage", "1"]  # 60 calls, each a fallback: Redis refuses at once

    _status, report = _run(arguments, trained_model, tmp_path)

    store = _criteria(report, "store")
    assert store["no Score call fails"] is True
    late = "every answer 2 s after the return from the model (deadline fallbacks aside)"
    assert store[late] is True
    assert store["p99 of answers sent during the outage"] is not None
    figures = report["scenarios"][0]["figures"]
    assert figures["fallbacks_during_outage"] > 0
    assert "state_unavailable" in figures["fallback_reasons"]
    assert figures["model_answers_after_return"] > 0
    assert figures["answers_judged_2s_after_return"] > 0  # the criterion above was not empty


def test_chaos_registry_unreadable_keeps_the_champion_and_the_watcher_recovers(
    trained_model: TrainedModel, tmp_path: Path
):
    """The registry renamed away for 1 s under load, then back with a new champion: no call
    fails, every answer meanwhile from the old champion, health SERVING throughout, and the
    version promoted after the return answers (the 5 s bound on that is the recorded runs')."""
    arguments = ["chaos", "--scenario", "registry", "--rate", "60", "--seconds", "1.5"]
    arguments += ["--registry-outage", "1"]  # ten of the watcher's polls find no registry

    _status, report = _run(arguments, trained_model, tmp_path)

    registry = _criteria(report, "registry")
    assert registry["no call fails (outcomes NOT_FOUND aside)"] is True
    champion = "every answer during the outage from the champion (deadline fallbacks aside)"
    assert registry[champion] is True
    assert registry["health SERVING throughout"] is True
    figures = report["scenarios"][0]["figures"]
    assert figures["answers_during_outage"] > 0
    assert figures["promoted_version_answers"] > 0


def test_chaos_overload_refuses_with_documented_statuses_and_answers_after(
    trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """4 x a fixed 1,500/s for 1 s, gRPC's backlog bounded at 32 calls (the setting that
    sheds, docs/operations.md): only OK, CANCELLED (gRPC's core, beyond the backlog) or
    RESOURCE_EXHAUSTED; some refused, and counted by the server as refused unread; answers
    during the flood and after it; the health port SERVING throughout. What CI checks is
    correctness: the full run judges the 5 ms refusals, 90% goodput and the 2 s recovery on
    a quiet box. "Every refusal RESOURCE_EXHAUSTED", which grpcio 1.85 cannot meet (its
    core refuses with CANCELLED), fails there and here."""
    monkeypatch.setenv("FRAUD_SERVER__MAX_PENDING_CALLS", "32")
    arguments = ["chaos", "--scenario", "overload", "--saturation", "1500", "--seconds", "1"]
    # 6,000 calls in the second: the backlog of 32 overflows within its first milliseconds.
    arguments += ["--overload-factor", "4", "--overload-seconds", "1"]

    _status, report = _run(arguments, trained_model, tmp_path)

    overload = _criteria(report, "overload")
    assert overload["every refusal RESOURCE_EXHAUSTED"] is False  # CANCELLED, below
    assert overload["health port answered SERVING throughout"] is True
    figures = report["scenarios"][0]["figures"]
    phases = figures["score_statuses_by_phase"]
    every_status = {code for counts in phases.values() for code in counts}
    assert every_status <= {"OK", "CANCELLED", "RESOURCE_EXHAUSTED"}, phases
    assert phases["overload"]["CANCELLED"] > 0
    assert phases["overload"]["OK"] > 0
    assert phases["after"]["OK"] > 0
    # Every call the clients saw refused in the core, counted by the server from channelz;
    # at most the calls still closing in the core at the scrape more (tests/test_overload.py).
    assert 0 <= figures["server_refused_unread"] - figures["client_cancelled"] <= 2, figures


def test_replicas_logs_merge_in_the_order_the_shared_state_took_the_swipes():
    """Replica 0 took a1 then a2 (its log), a2 answered first; b1, on replica 1, was sent
    after a2 was answered, so after a1 was taken too: a merge by each swipe's own answer
    time would put b1 before a1."""
    records = [
        Record("score", 0.0, 1.0, "OK", "a1"),
        Record("score", 0.1, 0.5, "OK", "a2"),
        Record("score", 0.6, 0.7, "OK", "b1"),
    ]

    assert _shared_state_order([["a1", "a2"], ["b1"]], records) == ["a1", "a2", "b1"]
    assert _shared_state_order([["b1"], ["a1", "a2"]], records) == ["a1", "a2", "b1"]


def test_entities_of_calls_overlapping_on_two_replicas_are_of_unknown_order():
    swipes = {  # transaction: (card, terminal, merchant)
        "a": ("card-1", "term-1", "m-1"),
        "b": ("card-1", "term-2", "m-2"),  # overlaps a on another replica
        "c": ("card-3", "term-2", "m-3"),  # overlaps b on b's replica
        "d": ("card-4", "term-4", "m-3"),  # after c
    }
    calls = [Call(CallKind.SCORE, _swipe(tx, *entities)) for tx, entities in swipes.items()]
    records = [
        Record("score", 0.0, 1.0, "OK", "a"),
        Record("score", 0.5, 2.0, "OK", "b"),
        Record("score", 1.5, 2.5, "OK", "c"),
        Record("score", 2.5, 3.0, "OK", "d"),
    ]
    logs = [["a", "d"], ["b", "c"]]
    schedule = Schedule(calls, [record.sent for record in records])

    assert _overlapping_entities(records, schedule, logs) == {"card card-1"}
    failed = [*records[:3], records[3]._replace(code="DEADLINE_EXCEEDED")]
    assert _overlapping_entities(failed, schedule, logs) == {
        "card card-1", "card card-4", "terminal term-4", "merchant m-3",
    }  # fmt: skip
    outcome = Record("outcome", 2.2, 2.3, "OK", "b")  # card-1, term-2 with c in flight
    assert _overlapping_entities([*records, outcome], schedule, logs) == {
        "card card-1", "terminal term-2",
    }  # fmt: skip


def _swipe(transaction_id: str, card: str, terminal: str, merchant: str) -> bytes:
    transaction = scoring_pb2.Transaction(
        transaction_id=transaction_id, card_id=card, terminal_id=terminal, merchant_id=merchant
    )
    return scoring_pb2.ScoreRequest(transaction=transaction).SerializeToString()


def test_soak_counts_every_answer_in_the_records(trained_model: TrainedModel, tmp_path: Path):
    arguments = ["soak", "--minutes", "0.05", "--rate", "60", "--promote-every", "1"]
    arguments += ["--sighup-every", "2", "--sample-every", "1"]

    _status, report = _run(arguments, trained_model, tmp_path)

    criteria = _criteria(report, "soak")
    assert criteria["no failed call (outcomes NOT_FOUND aside)"] is True
    lost = "no decision record lost: records between the calls answered and the calls sent"
    assert criteria[lost] is True
    slope = "RSS slope after the first minute, the state's file mapping aside"
    assert criteria[slope] is None  # too short to judge
    figures = report["scenarios"][0]["figures"]
    assert figures["promotions"] >= 2
    assert figures["sighups"] >= 1
    assert figures["stream_answers"] > 0


def test_an_answer_of_the_old_version_sent_after_the_new_one_answered_is_stale():
    promotions = [(0.0, "a"), (1.0, "b")]
    records = [
        Record("score", 0.5, 0.6, "OK", "t1", "a"),
        Record("score", 1.0, 1.2, "OK", "t2", "a"),  # in flight at the swap: allowed
        Record("score", 1.1, 1.15, "OK", "t3", "b"),
        Record("score", 1.3, 1.4, "OK", "t4", "a"),  # sent after b answered: stale
    ]

    assert stale_answers(records, promotions) == 1
    assert stale_answers(records[:3], promotions) == 0


@pytest.mark.parametrize(
    ("criteria", "passed"),
    [([equal("x", 1, 1), not_judged("y", "-", "too short")], True), ([equal("x", 1, 2)], False)],
)
def test_a_scenario_fails_only_on_a_failed_criterion(criteria: list[Any], passed: bool):
    assert Scenario("s", criteria).passed is passed
