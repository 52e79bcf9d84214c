"""Tests for training.retraining.triggers: schedule, lasting drift and live precision, and their
memory."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.model.registry import HistoryEntry
from training.config import TriggerConfig
from training.retraining.feedback import read_decision_log, read_outcomes
from training.retraining.server_scrape import MetricsLook, ServerMetrics, ShadowCounts
from training.retraining.triggers import (
    HISTORY_WARMUP_SECONDS,
    LivePrecision,
    Triggers,
    judged_psi,
    live_precision,
    precision_check,
    schedule_check,
)

NOW = datetime(2026, 9, 30, 12, tzinfo=UTC)
CHAMPION = "20260901T000000Z-aaaaaaaa"
DAY_NS = 86_400 * 10**9
WEEK_NS = 7 * DAY_NS
START = datetime(2026, 9, 1, tzinfo=UTC)
DRIFT = TriggerConfig(schedule_hours=0, precision_floor=0, drift_psi=0.25, drift_checks=3)
PRECISION = TriggerConfig(schedule_hours=0, precision_floor=0.5, min_labelled_alerts=10)


def entry(action: Any, hours_ago: float) -> HistoryEntry:
    """A history line written `hours_ago` before NOW."""
    return HistoryEntry(
        at=NOW - timedelta(hours=hours_ago),
        action=action,
        alias=None,
        version=CHAMPION,
        previous=None,
        reason="test",
    )


def server(
    psi: dict[str, float], *, score_psi: float | None = None, up_days: float = 60
) -> ServerMetrics:
    """A server's answer with the given PSIs, up for `up_days`."""
    return ServerMetrics(
        url="http://127.0.0.1:9464/metrics",
        feature_psi=psi,
        score_psi=score_psi,
        shadow=ShadowCounts(),
        aliases={},
        started_at=NOW.timestamp() - up_days * 86_400,
    )


def look(*servers: ServerMetrics, unreachable: int = 0) -> MetricsLook:
    """A look at `servers`, and at `unreachable` servers that did not answer."""
    down = {f"http://127.0.0.1:{9000 + n}/metrics": "refused" for n in range(unreachable)}
    return MetricsLook(servers, down)


DRIFTED = look(server({"amount": 0.4}))
CLEAR = look(server({"amount": 0.1}))


def check_drift(triggers: Triggers, metrics: MetricsLook | None) -> str | None:
    """The name of the trigger that fired at this look, if one did."""
    fired = triggers.check(history=[], now=NOW, metrics=metrics, precision=None)
    return None if fired is None else fired.name


def test_schedule_fires_without_any_publication_or_decline():
    """A registry whose history holds no publish or decline is due for a retrain."""
    check = schedule_check([entry("promote", 1)], now=NOW, schedule_hours=168)

    assert check.holds
    assert "no publication" in check.detail


def test_schedule_waits_until_the_last_publication_is_old_enough():
    """A publication 2 h ago keeps a weekly schedule quiet; 170 h ago fires it."""
    assert not schedule_check([entry("publish", 2)], now=NOW, schedule_hours=168).holds
    assert schedule_check([entry("publish", 170)], now=NOW, schedule_hours=168).holds


def test_a_declined_retrain_restarts_the_schedule_and_a_promotion_does_not():
    """Decline entries count as a retrain; promotions and refusals do not."""
    history = [entry("publish", 300), entry("decline", 5), entry("promote", 1)]
    assert not schedule_check(history, now=NOW, schedule_hours=168).holds
    history = [entry("publish", 300), entry("promote", 1), entry("refuse", 1)]
    assert schedule_check(history, now=NOW, schedule_hours=168).holds


def test_schedule_hours_zero_turns_the_schedule_off():
    """With schedule_hours 0 an empty history fires nothing."""
    assert not schedule_check([], now=NOW, schedule_hours=0).holds


def test_drift_fires_on_the_required_consecutive_look_only():
    """Two drifted looks are not enough with drift_checks 3; the third fires, with figures."""
    triggers = Triggers(DRIFT)

    fired = [check_drift(triggers, DRIFTED) for _ in range(3)]

    assert fired == [None, None, "drift"]
    assert "PSI 0.400 of amount" in triggers.details[1]


def test_a_clear_look_breaks_the_run_of_drifted_looks():
    """Drifted, drifted, clear, drifted, drifted: never three in a row, never fires."""
    triggers = Triggers(DRIFT)

    fired = [
        check_drift(triggers, metrics) for metrics in (DRIFTED, DRIFTED, CLEAR, DRIFTED, DRIFTED)
    ]

    assert fired == [None] * 5


def test_a_look_at_which_no_server_answered_neither_counts_nor_breaks_the_run():
    """Drifted, nobody answered, drifted, drifted: the run is three, it fires."""
    triggers = Triggers(DRIFT)

    assert check_drift(triggers, DRIFTED) is None
    assert check_drift(triggers, look(unreachable=2)) is None
    assert "no server answered (2 of 2); look not counted" in triggers.details[1]
    assert [check_drift(triggers, DRIFTED) for _ in range(2)] == [None, "drift"]


def test_drift_is_judged_on_the_servers_that_answered():
    """One server down does not stop another's drift from counting."""
    triggers = Triggers(DRIFT)
    partly = look(server({"amount": 0.4}), unreachable=1)

    assert [check_drift(triggers, partly) for _ in range(3)] == [None, None, "drift"]


def test_a_retrained_drift_episode_stays_quiet_until_it_clears():
    """After a retrain, lasting drift fires no more; a clear look re-arms it."""
    triggers = Triggers(DRIFT.model_copy(update={"drift_checks": 1}))
    assert check_drift(triggers, DRIFTED) == "drift"
    triggers.retrained()

    assert check_drift(triggers, DRIFTED) is None
    assert "already answered" in triggers.details[1]
    assert check_drift(triggers, CLEAR) is None
    assert check_drift(triggers, DRIFTED) == "drift"


def test_drift_without_metrics_urls_is_off():
    """No configured server: the drift trigger says it is off and never fires."""
    triggers = Triggers(DRIFT.model_copy(update={"drift_checks": 1}))

    assert check_drift(triggers, None) is None
    assert triggers.details[1] == "drift off (no metrics_urls)"


def test_cyclic_features_are_never_judged():
    """hour_of_day and day_of_week drift in any short window: left out even on old servers."""
    judged = judged_psi(
        server({"hour_of_day": 3.0, "day_of_week": 2.0, "amount": 0.1}), now_s=NOW.timestamp()
    )

    assert judged == {"amount": 0.1}


def test_history_features_and_the_score_wait_for_the_servers_state_to_fill():
    """On a server up 2 days only the transaction's own fields count; after 30 days all do."""
    psi = {"amount": 0.1, "card_tx_count_1d": 0.9}
    young = server(psi, score_psi=0.8, up_days=2)
    old = server(psi, score_psi=0.8, up_days=HISTORY_WARMUP_SECONDS / 86_400 + 1)

    assert judged_psi(young, now_s=NOW.timestamp()) == {"amount": 0.1}
    assert judged_psi(old, now_s=NOW.timestamp()) == {**psi, "score": 0.8}


def test_a_server_that_does_not_say_when_it_started_counts_as_young():
    """Without process_start_time_seconds history features are not judged."""
    unknown = ServerMetrics(
        "u", {"card_tx_count_1d": 0.9, "mcc": 0.3}, 0.7, ShadowCounts(), {}, None
    )

    assert judged_psi(unknown, now_s=NOW.timestamp()) == {"mcc": 0.3}


def days(n: float) -> str:
    """ISO time `n` days after START."""
    return (START + timedelta(days=n)).isoformat()


def decision(
    transaction_id: str,
    day: float,
    *,
    decision: str = "REVIEW",
    source: str = "MODEL",
    model_version: str = CHAMPION,
) -> dict[str, Any]:
    """A decision record as the server logs it (features left out)."""
    return {
        "transaction_id": transaction_id,
        "event_time": days(day),
        "card": "tok_1",
        "terminal_id": "T1",
        "merchant_id": "M1",
        "amount": 10.0,
        "currency": "EUR",
        "mcc": 5411,
        "entry_mode": 1,
        "card_present": True,
        "country": "FR",
        "score": 0.5,
        "decision": decision,
        "source": source,
        "fallback_reason": "",
        "model_version": model_version if source == "MODEL" else "",
        "feature_engine_version": 1,
        "features": None,
        "logged_at": days(day),
    }


def outcome(transaction_id: str, day: float, *, is_fraud: bool = True) -> dict[str, Any]:
    """An outcome record reported `day` days after START."""
    return {
        "transaction_id": transaction_id,
        "is_fraud": is_fraud,
        "reported_at": days(day),
        "received_at": days(day),
    }


def write_segment(directory: Path, kind: str, records: list[dict[str, Any]]) -> Path:
    """One log segment of `records`, named as the server names them."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}-20260901T000000000000Z-100-0.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return directory


@pytest.fixture
def logs(tmp_path: Path) -> tuple[Path, Path]:
    """Decision and outcome logs whose newest time is day 20 (label delay 7, window 7 days).

    In the labelled window (days 6 to 13): ten champion alerts on day 10, three reported
    fraud. Outside it, or not the champion's alerts: frauds that must not count.
    """
    in_window = [
        decision(f"w{n}", 10, decision="DECLINE" if n % 2 else "REVIEW") for n in range(10)
    ]
    others = [
        decision("recent", 15),  # within the label delay: only a fraud report would label it
        decision("old", 3),
        decision("fallback", 10, source="FALLBACK", decision="DECLINE"),
        decision("other_model", 10, model_version="20260801T000000Z-cccccccc"),
        decision("approved", 10, decision="APPROVE"),
    ]
    reported = [
        outcome(tid, 11) for tid in ("w0", "w1", "w2", "fallback", "other_model", "approved")
    ]
    reported += [outcome("recent", 16), outcome("old", 4), outcome("w3", 20, is_fraud=False)]
    decisions = write_segment(tmp_path / "decisions", "decisions", in_window + others)
    return decisions, write_segment(tmp_path / "outcomes", "outcomes", reported)


def measure(logs: tuple[Path, Path], champion: str = CHAMPION) -> LivePrecision:
    """The champion's live precision over the test logs, label delay and window 7 days."""
    decisions, outcomes = logs
    return live_precision(
        read_decision_log(decisions, feature_count=3),
        read_outcomes(outcomes),
        champion=champion,
        window_days=7,
        label_delay_ns=WEEK_NS,
    )


def test_live_precision_counts_the_champions_labelled_alerts_a_label_delay_back(logs):
    """Only the champion's model reviews and declines of days 6 to 13 count: 3 of 10."""
    measured = measure(logs)

    assert (measured.alerts, measured.frauds) == (10, 3)
    assert measured.precision == pytest.approx(0.3)
    assert measured.end_ns - measured.start_ns == WEEK_NS


def test_another_champion_has_no_alerts_in_the_window(logs):
    """Decisions of earlier models say nothing of a new champion's precision."""
    measured = measure(logs, champion="20260915T000000Z-dddddddd")

    assert measured.alerts == 0
    assert measured.precision is None


def test_precision_below_the_floor_over_enough_alerts_holds(logs):
    """0.3 under a 0.5 floor over 10 labelled alerts holds, and the detail gives the figures."""
    check = precision_check(measure(logs), PRECISION)

    assert check.holds
    assert "precision 0.300 (3 frauds in 10 labelled" in check.detail


def test_too_few_labelled_alerts_do_not_hold(logs):
    """With 11 labelled alerts required, 10 are not enough to judge precision."""
    config = PRECISION.model_copy(update={"min_labelled_alerts": 11})

    assert not precision_check(measure(logs), config).holds


def test_precision_fires_once_per_episode(logs):
    """Low precision fires; after a retrain it stays quiet until a look sees it clear."""
    triggers = Triggers(PRECISION)
    low = measure(logs)
    high = LivePrecision(CHAMPION, alerts=20, frauds=15, start_ns=low.start_ns, end_ns=low.end_ns)

    def fired(measured: LivePrecision | None) -> str | None:
        result = triggers.check(history=[], now=NOW, metrics=None, precision=measured)
        return None if result is None else result.name

    assert fired(low) == "precision"
    assert fired(low) == "precision"  # no retrain ran to its end: still due
    triggers.retrained()
    assert [fired(low), fired(None), fired(high), fired(low)] == [None, None, None, "precision"]


def test_precision_floor_zero_turns_the_trigger_off(logs):
    """With a zero floor the low precision fires nothing and the detail says it is off."""
    triggers = Triggers(PRECISION.model_copy(update={"precision_floor": 0}))

    assert triggers.check(history=[], now=NOW, metrics=None, precision=measure(logs)) is None
    assert triggers.details[2] == "precision off"


def test_the_first_trigger_that_fires_wins_and_every_detail_is_kept(logs):
    """Schedule and precision both due: schedule is returned, the three details are kept."""
    triggers = Triggers(PRECISION.model_copy(update={"schedule_hours": 1}))

    fired = triggers.check(history=[], now=NOW, metrics=None, precision=measure(logs))

    assert fired is not None
    assert fired.name == "schedule"
    assert fired.detail.startswith("schedule:")
    assert [detail.split(" ")[0] for detail in triggers.details] == [
        "schedule:",
        "drift",
        "precision:",
    ]
