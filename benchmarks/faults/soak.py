"""`fraud-bench soak`: a long open loop with promotions and SIGHUPs, judged.

At `rate` calls/s (by default `load_share` of the saturation rate, measured first), unary
and `ScoreStream` mixed (a third on streams), frauds' outcomes reported, the decision log
on, against one `fraud-serve` on a copy of the registry polled every 0.1 s: every
`promote_every` s the champion and a republished copy are promoted in turn, every
`sighup_every` s the server gets SIGHUP. The client's channel is the one a POS backend is
told to open (`service.grpc_api.client.CHANNEL_OPTIONS`: its service config tries a call
refused with UNAVAILABLE again, as when a connection reaches `max_connection_age` and is
sent away in the instant a call starts on it). Every `sample_every` s: its RSS and the
feature state's record count. Judged:

    no failed call
    p99 stable        p99 of the last third of the run within 1.2x the first third's (the
                      issue's 5-minute windows for a 15-minute run)
    RSS slope         least-squares slope of the RSS samples after the first minute, per
                      hour, within `RSS_SLOPE_MIB_PER_HOUR`, without the LMDB state's file
                      mapping (it grows until the state's windows are full: see below)
    nothing lost      decision-log records at least the Score calls answered, and at most
                      those sent (a call that failed at the client may have been answered
                      and logged after its deadline); outcome-log records likewise for the
                      outcomes (read after a graceful stop)
    state flat        the largest record count of the state in the last third at most 1%
                      above the largest in the middle third: eviction sweeps make the count
                      a saw (records pass the horizon steadily, a sweep reaches them in
                      turns), whose teeth stop growing once the windows are full; judged
                      only once the history replayed spans twice the state's windows
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.faults import answers
from benchmarks.faults.criteria import Criterion, Scenario, at_most, equal, not_judged
from benchmarks.faults.driver import OK, OUTCOME, Record, RecordingLoad, phased_schedule
from benchmarks.faults.reloads import POLL_SECONDS, copy_registry
from benchmarks.faults.saturation import find_saturation
from benchmarks.faults.server import ManagedServer
from benchmarks.load.traffic import Call, OutcomeMix, build_calls, load_history, new_run_id
from benchmarks.reload_latency import republished
from benchmarks.servers.launch import fraud_serve_spec
from service.grpc_api.client import CHANNEL_OPTIONS
from service.model.registry import CHAMPION, Registry
from training.registry.publishing import promote

RSS_SLOPE_MIB_PER_HOUR = 20.0
P99_GROWTH = 1.2
SATURATION_BUDGET_MS = 50.0
STREAM_SHARE = 1 / 3
# The state keeps label delay + 31 days of event time (docs/operations.md).
STATE_WINDOW_DAYS = 38.0
_MIB = 1024 * 1024
_OUTCOMES = OutcomeMix(share=1.0, lag=200)
_STATE = "fraud_feature_state_entities"
_SHOWN = 20  # failed calls listed in the report, with the second each was sent


@dataclass(frozen=True)
class SoakSettings:
    registry: Path
    data: Path
    out: Path
    minutes: float = 15.0
    rate: float | None = None
    load_share: float = 0.6
    promote_every: float = 30.0
    sighup_every: float = 60.0
    sample_every: float = 5.0

    def __post_init__(self) -> None:
        if not 0.05 <= self.minutes <= 24 * 60 or not 0 < self.load_share <= 1:
            raise ValueError("--minutes must be 0.05 to 1,440 and --load-share in (0, 1]")
        if self.rate is not None and not 1 <= self.rate <= 20_000:
            raise ValueError("--rate must be 1 to 20,000/s")
        if min(self.promote_every, self.sighup_every, self.sample_every) < 0.5:
            raise ValueError("--promote-every, --sighup-every and --sample-every: 0.5 s or more")


def run_soak(settings: SoakSettings) -> list[Scenario]:
    registry = copy_registry(settings.registry, settings.out / "soak-registry")
    champion = Registry(registry).alias(CHAMPION)
    if champion is None:
        raise ValueError(f"{settings.registry} has no champion")
    versions = (champion, republished(registry, champion))
    spec = fraud_serve_spec("soak", registry)
    spec = dataclasses.replace(
        spec, environment=spec.environment | {"FRAUD_MODELS__POLL_SECONDS": POLL_SECONDS}
    )
    length = settings.minutes * 60
    skip = 0

    def calls(rows: int) -> list[Call]:
        nonlocal skip
        history = load_history(settings.data, rows, skip)
        skip += rows
        return build_calls(history, new_run_id(), _OUTCOMES)

    files = settings.out / "soak-server"
    server = ManagedServer(spec, files)
    with server:
        rate = settings.rate or settings.load_share * find_saturation(
            server.target, calls, SATURATION_BUDGET_MS
        )
        history = load_history(settings.data, round(rate * length) + 1, skip)
        event_days = _days(
            history.requests[0].transaction.timestamp.seconds,
            history.requests[-1].transaction.timestamp.seconds,
        )
        schedule = phased_schedule(build_calls(history, new_run_id(), _OUTCOMES), [(length, rate)])
        decisions_before = _count_lines(files / "decisions")
        outcomes_before = _count_lines(files / "outcomes")
        load = RecordingLoad(
            server.target, schedule, stream_share=STREAM_SHARE, channel_options=CHANNEL_OPTIONS
        )
        load.begin()
        samples: list[tuple[float, float, float]] = []
        total_rss: list[float] = []
        next_promotion, next_sighup, promotions, sighups = (
            settings.promote_every,
            settings.sighup_every,
            0,
            0,
        )
        while (now := load.now()) < length:
            state = sum(v for k, v in server.metrics().items() if k.startswith(_STATE + "{"))
            rss = server.rss_bytes()
            samples.append((now, (rss - server.state_mapping_bytes()) / _MIB, state))
            total_rss.append(rss / _MIB)
            until = min(now + settings.sample_every, length)
            while (now := load.now()) < until:
                if now >= next_promotion:
                    promotions += 1
                    promote(registry, versions[promotions % 2], reason="fraud-bench soak")
                    next_promotion += settings.promote_every
                if now >= next_sighup:
                    server.signal(signal.SIGHUP)
                    sighups += 1
                    next_sighup += settings.sighup_every
                time.sleep(min(0.1, max(0.0, until - now)))
        records = load.join()
    decisions = _count_lines(files / "decisions") - decisions_before
    outcomes = _count_lines(files / "outcomes") - outcomes_before
    scenario = _judge(
        settings, rate, records, samples, decisions, outcomes, promotions, sighups, event_days
    )
    times = [t for t, _, _ in samples]
    scenario.series["server RSS with the state mapping (MiB)"] = (times, total_rss)
    return [scenario]


def _judge(
    settings: SoakSettings,
    rate: float,
    records: list[Record],
    samples: list[tuple[float, float, float]],
    decisions: int,
    outcomes: int,
    promotions: int,
    sighups: int,
    event_days: float,
) -> Scenario:
    length = settings.minutes * 60
    scored = answers.scores(records)
    first = answers.p99_ms(answers.between(scored, 0, length / 3))
    last = answers.p99_ms(answers.between(scored, 2 * length / 3, length + 1))
    settled = [(t, rss) for t, rss, _ in samples if t >= 60]
    slope = _slope_per_hour(settled)
    answered = sum(r.code == OK for r in scored)
    acknowledged = sum(r.code == OK for r in records if r.kind == OUTCOME)
    failures = answers.failures(records)
    criteria: list[Criterion] = [
        equal(
            "no failed call (outcomes NOT_FOUND aside)",
            len(failures),
            0,
            " ".join(sorted({r.code for r in failures})),
        ),
        at_most(
            "p99 of the last third against 1.2x the first third's",
            round(last, 2),
            round(P99_GROWTH * first, 2),
            " ms",
        ),
        _slope_criterion(slope, len(settled)),
        _records_criterion("decision", decisions, answered, len(scored) - answered),
        _records_criterion(
            "outcome",
            outcomes,
            acknowledged,
            sum(r.kind == OUTCOME for r in records) - acknowledged,
        ),
        _state_criterion(samples, event_days),
    ]
    seconds, per_second, p99 = answers.per_second(scored, length)
    return Scenario(
        "soak",
        criteria,
        figures={
            "minutes": settings.minutes,
            "rate": round(rate, 1),
            "calls": len(records),
            "stream_answers": sum(r.kind == "stream" and r.code == OK for r in records),
            "promotions": promotions,
            "sighups": sighups,
            "p99_first_third_ms": round(first, 2),
            "p99_last_third_ms": round(last, 2),
            "rss_slope_mib_per_hour": None if slope is None else round(slope, 1),
            "event_days_replayed": round(event_days, 1),
            "failed_calls": [
                f"{r.sent:.1f} s {r.kind} {r.code} {r.details}" for r in failures[:_SHOWN]
            ],
        },
        series={
            "answers per second": (seconds, per_second),
            "p99 per second (ms)": (seconds, p99),
            "RSS without the state mapping (MiB)": (
                [t for t, _, _ in samples],
                [m for _, m, _ in samples],
            ),
            "feature-state records": ([t for t, _, _ in samples], [s for _, _, s in samples]),
        },
    )


def _records_criterion(kind: str, logged: int, answered: int, unanswered: int) -> Criterion:
    """No record lost: every call answered OK has one; a call the client saw fail may have
    one too (the server answered after the client's deadline), no more."""
    name = f"no {kind} record lost: records between the calls answered and the calls sent"
    passed = answered <= logged <= answered + unanswered
    return Criterion(name, passed, f"{logged:,}", f"{answered:,} to {answered + unanswered:,}", "")


def _slope_per_hour(samples: list[tuple[float, float]]) -> float | None:
    if len(samples) < 3:
        return None
    slope = np.polyfit([t for t, _ in samples], [m for _, m in samples], 1)[0]
    return float(slope) * 3600


def _slope_criterion(slope: float | None, count: int) -> Criterion:
    name = "RSS slope after the first minute, the state's file mapping aside"
    limit = f"<= {RSS_SLOPE_MIB_PER_HOUR:g} MiB/h"
    if slope is None:
        return not_judged(name, limit, f"{count} samples after the first minute: run longer")
    return at_most(name, round(slope, 1), RSS_SLOPE_MIB_PER_HOUR, " MiB/h")


def _state_criterion(samples: list[tuple[float, float, float]], event_days: float) -> Criterion:
    name = "feature state flat once its windows are full"
    limit = "last third's peak within 1% of the middle third's"
    if event_days < 2 * STATE_WINDOW_DAYS:
        why = f"the run replayed {event_days:.1f} days of history"
        why += f"; the windows span {STATE_WINDOW_DAYS:g}"
        return not_judged(name, limit, why)
    length = samples[-1][0]
    middle = [s for t, _, s in samples if length / 3 <= t < 2 * length / 3]
    last = [s for t, _, s in samples if t >= 2 * length / 3]
    if not middle or not last or not max(middle):
        return not_judged(name, limit, f"{len(samples)} samples: run longer")
    growth = max(last) / max(middle) - 1
    return at_most(name, round(100 * growth, 2), 1.0, " %")


def _days(first: int, last: int) -> float:
    return (last - first) / 86_400


def _count_lines(directory: Path) -> int:
    """Complete JSON lines in a record log's segments."""
    count = 0
    for path in sorted(directory.glob("*.jsonl")) if directory.exists() else []:
        for line in path.read_bytes().splitlines():
            try:
                json.loads(line)
            except ValueError:
                continue
            count += 1
    return count
