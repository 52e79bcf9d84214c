"""`fraud-bench chaos`: faults injected into a loaded `fraud-serve`, each judged.

    kill      SIGKILL, then a start on the same state and port. Judged: the outage (last
              answer before, first after) within the restart time plus 1 s; every outcome
              acknowledged OK before the kill is in the outcome log afterwards; the answers
              after the restart score as an uninterrupted server fed the same answered
              calls in the same order scores them.
    store     Redis backend; redis-server killed for `store_outage` s and started again
              (empty). Judged: no call fails; answers sent during the outage within the
              budget; the first model answer within 2 s of Redis answering again.
    disk      the decision log on a tmpfs of its own (a user and mount namespace, so no
              privilege is needed), filled to the last byte, then freed. Judged: no call
              fails or falls back; drops counted while full; records written again within
              5 s of space returning.
    registry  the registry directory renamed away for `registry_outage` s (renaming works
              for root too, whom permissions do not stop), then back, and a promotion.
              Judged: no call fails, every answer meanwhile from the champion, health
              SERVING throughout, the promoted version answering within 5 s.
    overload  `overload_factor` x the saturation rate for `overload_seconds`, between two
              phases at half of it. Judged: refusals (RESOURCE_EXHAUSTED) within 5 ms,
              goodput >= 90% of saturation, health answering, p99 back within 2 s.
    rolling   three replicas on one Redis, called through one channel with the service
              config POS backends are told to use (round_robin, retries); at half the
              saturation rate each in turn gets SIGTERM and is started again on its port, as
              a Deployment's rolling update does. Judged: no call fails, every replica
              stops with status 0, every answer from the model (deadline fallbacks aside),
              and every answer scores as an uninterrupted server fed the same calls in the
              order the shared state took them (the replicas' decision logs merged by the
              client's answer times; entities of calls that overlapped on different
              replicas, whose order is not known, counted apart).

Each scenario starts its own server(s) in `<out>/chaos-<scenario>/`. The saturation rate is
`saturation`, or measured first with `benchmarks.faults.saturation`.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from grpc_health.v1 import health_pb2

from benchmarks.faults import answers
from benchmarks.faults.chaos_scenarios import SCENARIOS as SCENARIOS
from benchmarks.faults.criteria import Criterion, Scenario, at_least, at_most, equal, not_judged
from benchmarks.faults.driver import (
    MODEL,
    OK,
    OUTCOME,
    Record,
    RecordingLoad,
    Schedule,
    phased_schedule,
)
from benchmarks.faults.parallel_load import ParallelRecordingLoad
from benchmarks.faults.redis_process import RedisProcess
from benchmarks.faults.reloads import POLL_SECONDS, copy_registry
from benchmarks.faults.saturation import find_saturation
from benchmarks.faults.server import ManagedServer
from benchmarks.load.traffic import (
    Call,
    CallKind,
    OutcomeMix,
    build_calls,
    load_history,
    new_run_id,
)
from benchmarks.reload_latency import republished
from benchmarks.servers.launch import LOCAL_HOST, fraud_serve_spec, free_ports
from service.grpc_api._proto.fraud.v1 import scoring_pb2
from service.grpc_api.client import CHANNEL_OPTIONS, balanced_target
from service.records.segment_log import FLUSH_SECONDS
from training.registry.publishing import promote

REPLICAS = 3
BUDGET_MS = 20.0  # the server's default budget.server_budget_ms
SHED_LIMIT_MS = 5.0
# Client processes offering the overload: one cannot send 3 x the saturation on this
# machine without falling behind its schedule (benchmarks/RESULTS.md, "Overload").
OVERLOAD_CLIENTS = 2
RECOVERY_SECONDS = 2.0
OVERLOAD_P99_MS = 50.0  # the saturation search's budget: "recovered" is back under it
# Outcomes come soon after their swipe, so that a short run reports some.
_OUTCOMES = OutcomeMix(share=1.0, lag=50)
_TMPFS_BYTES = 64 * 1024 * 1024
# The outcome log writes every FLUSH_SECONDS: what was acknowledged in the interval before a
# SIGKILL may not be written yet. A margin for the writer's own delay on a busy machine.
_OUTCOME_FLUSH_ALLOWANCE = FLUSH_SECONDS + 0.3
# Load after the kill beyond `seconds`: a restart takes 2-3 s on a busy 2-core machine.
_RESTART_ALLOWANCE = 4.0


@dataclass(frozen=True)
class ChaosSettings:
    registry: Path
    data: Path
    out: Path
    scenarios: Sequence[str] = SCENARIOS
    rate: float = 300.0
    seconds: float = 10.0
    store_outage: float = 10.0
    registry_outage: float = 30.0
    overload_seconds: float = 30.0
    overload_factor: float = 3.0
    saturation: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.rate <= 20_000 or not 1 <= self.seconds <= 3600:
            raise ValueError("--rate must be 1 to 20,000/s and --seconds 1 to 3,600")
        if min(self.store_outage, self.registry_outage, self.overload_seconds) <= 0:
            raise ValueError("outages and the overload must last more than 0 s")
        if not 1 < self.overload_factor <= 20 or (self.saturation or 1) <= 0:
            raise ValueError("--overload-factor must be above 1 (at most 20), --saturation above 0")


class _Traffic:
    """The history's rows, handed out in consecutive slices as calls with fresh run ids."""

    def __init__(self, data: Path) -> None:
        self._data = data
        self._next = 0

    def calls(self, rows: int) -> list[Call]:
        """The calls of the next `rows` rows; ValueError if the history has fewer."""
        history = load_history(self._data, rows, self._next)
        self._next += rows
        return build_calls(history, new_run_id(), _OUTCOMES)


def run_chaos(settings: ChaosSettings) -> list[Scenario]:
    traffic = _Traffic(settings.data)
    runs: dict[str, Callable[[ChaosSettings, _Traffic, Path], Scenario]] = {
        "kill": _kill,
        "store": _store,
        "disk": _disk,
        "registry": _registry,
        "overload": _overload,
        "rolling": _rolling,
    }
    return [
        runs[name](settings, traffic, settings.out / f"chaos-{name}") for name in settings.scenarios
    ]


# --- kill -------------------------------------------------------------------------------------


def _kill(settings: ChaosSettings, traffic: _Traffic, files: Path) -> Scenario:
    length = 2 * settings.seconds + _RESTART_ALLOWANCE
    schedule = _with_verdicts(_steady(traffic, settings.rate, length))
    server = ManagedServer(fraud_serve_spec("chaos-kill", settings.registry), files)
    with server:
        load = RecordingLoad(server.target, schedule)
        load.begin()
        _sleep_until(load, settings.seconds)
        killed = load.now()
        server.kill()
        dead = load.now()
        restart_seconds = server.start()
        records = load.join()
    logged = _outcome_ids(files / "outcomes")
    acknowledged = [r for r in records if r.kind == OUTCOME and r.code == OK]
    lost = [r for r in acknowledged if r.transaction_id not in logged]
    # The outage: from the last answer before the process was gone to the first after.
    before = [r.done for r in records if r.code == OK and r.done <= dead]
    after = [r.done for r in records if r.code == OK and r.done > dead]
    outage = (min(after) - max(before)) if before and after else float("inf")
    order = _decision_log_ids(files / "decisions")
    compared = _compare_with_uninterrupted(settings, schedule, records, order, files, since=killed)
    failures = answers.failed(records)
    seconds, per_second, p99 = answers.per_second(answers.scores(records), length)
    return Scenario(
        "kill",
        [
            at_most(
                "outage within the restart time + 1 s",
                round(outage, 2),
                round(restart_seconds + 1.0, 2),
                " s",
                f"restart (spawn to SERVING) {restart_seconds:.2f} s",
            ),
            at_most(
                "acknowledged outcomes missing from the outcome log: only those acknowledged "
                "within its flush interval before the kill",
                round(_lost_window(lost, killed), 3),
                _OUTCOME_FLUSH_ALLOWANCE,
                " s",
                f"{len(lost)} of {len(acknowledged)} acknowledged are missing (an OK means "
                "applied to the feature state and queued for the log: docs/operations.md)",
            ),
            equal(
                "features continue: scores after the restart = an uninterrupted server's",
                compared.untouched_mismatches,
                0,
                f"{compared.compared} answers after the restart compared, "
                f"{compared.replayed} transactions replayed in the killed server's order; "
                "entities of a swipe absent from its decision log or answered by the "
                "fallback left out: "
                f"{compared.touched_mismatches} of their answers differ",
            ),
        ],
        figures={
            "calls": len(records),
            "failed_calls_during_outage": len(failures),
            "failed_codes": _codes(failures),
            "restart_seconds": round(restart_seconds, 2),
            "outage_seconds": round(outage, 2),
            "outcome_statuses": _codes([r for r in records if r.kind == OUTCOME]),
            "answered_but_not_in_decision_log": compared.answered_unlogged,
        },
        series={"answers per second": (seconds, per_second), "p99 per second (ms)": (seconds, p99)},
    )


@dataclass(frozen=True)
class _Comparison:
    compared: int
    replayed: int
    untouched_mismatches: int
    # Answers sharing a card, terminal or merchant with a swipe the decision logs do not
    # hold (a call that failed, counted before the kill or not, unknown; an answer whose
    # line was still queued when the process died: the log writes every 0.2 s), or with a
    # swipe the fallback answered (not counted there; the reference counts it).
    touched_mismatches: int
    answered_unlogged: int
    # Answers sharing an entity with swipes whose order the logs cannot tell (`uncertain`).
    uncertain_mismatches: int = 0


def _compare_with_uninterrupted(
    settings: ChaosSettings,
    schedule: Schedule,
    records: list[Record],
    order: Sequence[str],
    files: Path,
    *,
    since: float = float("-inf"),
    uncertain: frozenset[str] = frozenset(),
) -> _Comparison:
    """Feed a fresh server, one call at a time, every transaction of `order` (the order the
    feature state took them: the decision logs, before and after any restart), each
    acknowledged outcome after the swipe it followed; compare the scores of the answers
    sent after `since`. The order matters: two swipes at one merchant a millisecond apart,
    taken in the other order, see each other differently. Mismatches on the entities
    of `uncertain` are counted apart."""
    payloads = {
        _transaction_id(call): call for call in schedule.calls if call.kind is CallKind.SCORE
    }
    processed = [tx for tx in dict.fromkeys(order) if tx in payloads]
    logged = set(processed)
    acknowledged = {r.transaction_id for r in records if r.kind == OUTCOME and r.code == OK}
    outcomes_after: dict[str, list[Call]] = {}
    previous = ""
    for call in schedule.calls:
        if call.kind is CallKind.SCORE:
            previous = _transaction_id(call)
        elif _transaction_id(call) in acknowledged:
            outcomes_after.setdefault(previous, []).append(call)
    # Not in the log: failed calls (counted or not before the kill, unknown) and answers
    # whose log line died with the process; their entities' later scores are left out.
    unlogged = [r for r in records if r.kind != OUTCOME and r.transaction_id not in logged]
    # So do fallback answers: the fallback counts nothing in the state, and the unloaded
    # reference, deciding by the model, counts the same swipe.
    fallen_back = [r for r in records if r.kind != OUTCOME and r.code == OK and r.source != MODEL]
    touched: set[str] = set()
    for r in (*unlogged, *fallen_back):
        request = scoring_pb2.ScoreRequest.FromString(payloads[r.transaction_id].payload)
        touched |= _keys(request.transaction)
    after_kill = {
        r.transaction_id: r.score
        for r in records
        if r.code == OK and r.sent > since and r.kind != OUTCOME
    }
    # A generous budget: a deadline fallback of the reference on a busy machine would count
    # nothing in its state and prove nothing.
    reference = ManagedServer(
        fraud_serve_spec(f"{files.name}-reference", settings.registry),
        files / "reference",
        {"FRAUD_BUDGET__SERVER_BUDGET_MS": "60000"},
    )
    untouched = touched_mismatches = uncertain_mismatches = 0
    with reference, grpc.insecure_channel(reference.target) as channel:
        score: Any = channel.unary_unary(
            "/fraud.v1.FraudScoring/Score",
            response_deserializer=scoring_pb2.ScoreResponse.FromString,
        )
        outcome: Any = channel.unary_unary("/fraud.v1.FraudScoring/ReportOutcome")
        replayed: set[str] = set()
        # An outcome the state acknowledged came after its own swipe too, which a call
        # answered late (tried again) may put after the swipe the outcome followed.
        waiting: dict[str, list[Call]] = {}
        for transaction_id in processed:
            answer: Any = score(payloads[transaction_id].payload, timeout=5)
            replayed.add(transaction_id)
            for report in outcomes_after.get(transaction_id, []):
                reported = _transaction_id(report)
                if reported in replayed:
                    outcome(report.payload, timeout=5)
                elif reported in logged:
                    waiting.setdefault(reported, []).append(report)
                # else: the reference never takes its swipe (whose entities are touched)
            for report in waiting.pop(transaction_id, []):
                outcome(report.payload, timeout=5)
            expected = after_kill.get(transaction_id)
            if expected is None or abs(expected - answer.score) <= 1e-9:
                continue
            transaction = scoring_pb2.ScoreRequest.FromString(
                payloads[transaction_id].payload
            ).transaction
            if _keys(transaction) & touched:
                touched_mismatches += 1
            elif _keys(transaction) & uncertain:
                uncertain_mismatches += 1
            else:
                untouched += 1
    compared = sum(tx in after_kill for tx in processed)
    answered_unlogged = sum(r.code == OK for r in unlogged)
    return _Comparison(
        compared,
        len(processed),
        untouched,
        touched_mismatches,
        answered_unlogged,
        uncertain_mismatches,
    )


def _decision_log_ids(directory: Path) -> list[str]:
    """Transaction ids in the order the server logged its answers (segments by name: the
    time each was opened)."""
    ids: list[str] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                ids.append(json.loads(line)["transaction_id"])
            except (ValueError, KeyError):
                continue  # a torn last line
    return list(dict.fromkeys(ids))


def _with_verdicts(schedule: Schedule, every: int = 10, lag: int = 20) -> Schedule:
    """`schedule` with an analyst's verdict (an outcome, not fraud) for every `every`th
    swipe, `lag` calls later: frauds alone are too few for the outcome log to be put to
    the test in a short run. Each verdict is due with the call it follows."""
    calls: list[Call] = []
    due: list[float] = []
    pending: dict[int, list[bytes]] = {}
    for position, (call, offset) in enumerate(zip(schedule.calls, schedule.due, strict=True)):
        calls.append(call)
        due.append(offset)
        for payload in pending.pop(position, []):
            calls.append(Call(CallKind.OUTCOME, payload))
            due.append(offset)
        if call.kind is CallKind.SCORE and position % every == 0:
            transaction = scoring_pb2.ScoreRequest.FromString(call.payload).transaction
            verdict = scoring_pb2.OutcomeRequest(
                transaction_id=transaction.transaction_id, is_fraud=False
            )
            verdict.reported_at.CopyFrom(transaction.timestamp)
            pending.setdefault(position + lag, []).append(verdict.SerializeToString())
    return Schedule(calls, due)


def _keys(transaction: scoring_pb2.Transaction) -> set[str]:
    """The entities whose features a transaction feeds."""
    return {
        f"card {transaction.card_id}",
        f"terminal {transaction.terminal_id}",
        f"merchant {transaction.merchant_id}",
    }


def _lost_window(lost: list[Record], killed: float) -> float:
    """How long before the kill the earliest lost outcome was acknowledged (0: none lost)."""
    return max(0.0, killed - min(r.done for r in lost)) if lost else 0.0


def _outcome_ids(directory: Path) -> set[str]:
    ids: set[str] = set()
    for path in sorted(directory.glob("*.jsonl")) if directory.exists() else []:
        for line in path.read_bytes().splitlines():
            try:
                ids.add(json.loads(line)["transaction_id"])
            except (ValueError, KeyError):
                continue  # a torn last line
    return ids


# --- store ------------------------------------------------------------------------------------


def _store(settings: ChaosSettings, traffic: _Traffic, files: Path) -> Scenario:
    length = 2 * settings.seconds + settings.store_outage
    schedule = _steady(traffic, settings.rate, length)
    redis = RedisProcess(files / "redis")
    redis.start()
    try:
        environment = {"FRAUD_STATE__BACKEND": "redis", "FRAUD_STATE__URL": redis.url}
        server = ManagedServer(
            fraud_serve_spec("chaos-store", settings.registry), files, environment
        )
        with server:
            load = RecordingLoad(server.target, schedule)
            load.begin()
            _sleep_until(load, settings.seconds)
            down = load.now()
            redis.kill()
            _sleep_until(load, settings.seconds + settings.store_outage)
            redis.start()
            back = load.now()
            records = load.join()
    finally:
        redis.kill()
    scored = answers.scores(records)
    during = answers.between(scored, down, back)
    after = [r for r in scored if r.sent >= back and r.code == OK]
    first_model = min((r.done for r in after if r.source == MODEL), default=float("inf"))
    # A deadline fallback is the machine's load (the budget spent waiting for a CPU), not
    # the store: counted apart.
    late = [r for r in after if r.sent > back + RECOVERY_SECONDS and r.source != MODEL]
    late_fallbacks = [r for r in late if r.fallback_reason != "deadline"]
    failures = answers.failed(scored)  # outcomes are UNAVAILABLE while the store is down
    fallbacks = sum(r.source != MODEL for r in during if r.code == OK)
    seconds, per_second, p99 = answers.per_second(scored, length)
    model_share = _per_second_share(scored, length, lambda r: r.source == MODEL)
    return Scenario(
        "store",
        [
            equal("no Score call fails", len(failures), 0, _codes(failures)),
            at_most(
                "p99 of answers sent during the outage",
                round(answers.p99_ms(during), 2),
                BUDGET_MS,
                " ms",
            ),
            at_most(
                "first model answer after Redis answers again",
                round(first_model - back, 2),
                RECOVERY_SECONDS,
                " s",
            ),
            equal(
                "every answer 2 s after the return from the model (deadline fallbacks aside)",
                len(late_fallbacks),
                0,
                f"{len(late) - len(late_fallbacks)} deadline fallbacks",
            ),
        ],
        figures={
            "calls": len(records),
            "answers_during_outage": len(during),
            "fallbacks_during_outage": fallbacks,
            "fallback_reasons": _reasons(scored),
            "model_answers_after_return": sum(r.source == MODEL for r in after),
            "answers_judged_2s_after_return": sum(r.sent > back + RECOVERY_SECONDS for r in after),
            "outage_seconds": round(back - down, 2),
            "outcome_statuses": _codes([r for r in records if r.kind == OUTCOME]),
        },
        series={
            "answers per second": (seconds, per_second),
            "share from the model": (seconds, model_share),
            "p99 per second (ms)": (seconds, p99),
        },
    )


# --- disk -------------------------------------------------------------------------------------


def _disk(settings: ChaosSettings, traffic: _Traffic, files: Path) -> Scenario:
    length = 3 * settings.seconds
    schedule = _steady(traffic, settings.rate, length)
    decisions = files / "decisions"
    decisions.mkdir(parents=True, exist_ok=True)
    server = ManagedServer(
        fraud_serve_spec("chaos-disk", settings.registry), files, wrap=_on_tmpfs(decisions)
    )
    with server:
        filler = Path(f"/proc/{server.pid}/root") / str(decisions).lstrip("/") / "filler"
        load = RecordingLoad(server.target, schedule)
        load.begin()
        _sleep_until(load, settings.seconds)
        before = server.metrics()
        full = load.now()
        _fill(filler)
        _sleep_until(load, 2 * settings.seconds)
        during = server.metrics()
        filler.unlink()
        freed = load.now()
        resumed = _wait_for_writes(server, during, freed, load)
        records = load.join()
    dropped = _metric_delta(
        before, during, 'fraud_record_log_dropped_total{log="decisions",reason="write_error"}'
    )
    failures = answers.failures(records)
    scored = answers.scores(records)
    fallbacks = [
        r for r in scored if r.code == OK and r.source != MODEL and r.fallback_reason != "deadline"
    ]
    seconds, per_second, p99 = answers.per_second(scored, length)
    return Scenario(
        "disk",
        [
            equal("no call fails (outcomes NOT_FOUND aside)", len(failures), 0, _codes(failures)),
            equal(
                "no fallback decision (deadline fallbacks, the machine's load, aside)",
                len(fallbacks),
                0,
                _reasons(scored),
            ),
            at_most(
                "p99 while the disk is full, against 2x before",
                round(answers.p99_ms(answers.between(scored, full, freed)), 2),
                round(2 * max(answers.p99_ms(answers.between(scored, 0, full)), 1.0), 2),
                " ms",
            ),
            at_least("decision records dropped while full (counted)", dropped, 1),
            at_most("records written again after space returns", round(resumed, 2), 5.0, " s"),
        ],
        figures={
            "calls": len(records),
            "dropped_write_error": dropped,
            "tmpfs_bytes": _TMPFS_BYTES,
        },
        series={"answers per second": (seconds, per_second), "p99 per second (ms)": (seconds, p99)},
    )


def _on_tmpfs(directory: Path) -> Callable[[list[str]], list[str]]:
    """A wrapper that runs the server in a user and mount namespace of its own, with a
    tmpfs of `_TMPFS_BYTES` mounted on `directory` (visible to that server alone)."""

    def wrap(argv: list[str]) -> list[str]:
        mount = (
            f"mount -t tmpfs -o size={_TMPFS_BYTES},mode=0700 tmpfs {shlex.quote(str(directory))}"
        )
        return [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            f'{mount} && exec "$@"',
            "sh",
            *argv,
        ]

    return wrap


def _fill(path: Path) -> None:
    """Write `path` until its file system is full."""
    # Unbuffered: a write that does not fit fails at once, and closing has nothing left.
    with path.open("wb", buffering=0) as file:
        for size in (1024 * 1024, 65536, 4096, 512, 1):
            try:
                while file.write(b"\0" * size) == size:
                    pass
            except OSError:
                continue


def _wait_for_writes(
    server: ManagedServer, before: dict[str, float], since: float, load: RecordingLoad
) -> float:
    key = 'fraud_record_log_written_total{log="decisions"}'
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _metric_delta(before, server.metrics(), key) > 0:
            return load.now() - since
        time.sleep(0.1)
    return float("inf")


# --- registry ---------------------------------------------------------------------------------


def _registry(settings: ChaosSettings, traffic: _Traffic, files: Path) -> Scenario:
    length = 2 * settings.seconds + settings.registry_outage
    schedule = _steady(traffic, settings.rate, length)
    registry = copy_registry(settings.registry, files / "registry")
    away = registry.with_name("registry-away")
    champion = json.loads((registry / "aliases" / "champion.json").read_text())["version"]
    other = republished(registry, champion)
    spec = fraud_serve_spec("chaos-registry", registry)
    spec = dataclasses.replace(
        spec, environment=spec.environment | {"FRAUD_MODELS__POLL_SECONDS": POLL_SECONDS}
    )
    with ManagedServer(spec, files) as server, _HealthProbe(server.target) as health:
        load = RecordingLoad(server.target, schedule)
        load.begin()
        _sleep_until(load, settings.seconds)
        gone = load.now()
        registry.rename(away)
        _sleep_until(load, settings.seconds + settings.registry_outage)
        away.rename(registry)
        promote(registry, other, reason="fraud-bench chaos registry")
        returned = load.now()
        records = load.join()
    scored = answers.scores(records)
    during = [r for r in answers.between(scored, gone, returned) if r.code == OK]
    wrong = [
        r
        for r in during
        if r.version != champion or (r.source != MODEL and r.fallback_reason != "deadline")
    ]
    first_new = min(
        (r.done for r in scored if r.code == OK and r.version == other), default=float("inf")
    )
    failures = answers.failures(records)
    seconds, per_second, p99 = answers.per_second(scored, length)
    return Scenario(
        "registry",
        [
            equal("no call fails (outcomes NOT_FOUND aside)", len(failures), 0, _codes(failures)),
            equal(
                "every answer during the outage from the champion (deadline fallbacks aside)",
                len(wrong),
                0,
                f"of {len(during)}",
            ),
            equal("health SERVING throughout", health.not_serving, 0, f"of {health.checks} checks"),
            at_most(
                "watcher recovers: the version promoted after the return answers",
                round(first_new - returned, 2),
                5.0,
                " s",
            ),
        ],
        figures={
            "outcome_statuses": _codes([r for r in records if r.kind == OUTCOME]),
            "calls": len(records),
            "answers_during_outage": len(during),
            "promoted_version_answers": sum(r.code == OK and r.version == other for r in scored),
            "outage_seconds": round(returned - gone, 2),
        },
        series={"answers per second": (seconds, per_second), "p99 per second (ms)": (seconds, p99)},
    )


# --- overload ---------------------------------------------------------------------------------


def _overload(settings: ChaosSettings, traffic: _Traffic, files: Path) -> Scenario:
    spec = fraud_serve_spec("chaos-overload", settings.registry)
    # The probes that count ask the health port, as the Kubernetes manifests' do
    # (deploy/kubernetes); the scoring port's health checks are counted too.
    health_port = free_ports(1)
    environment = {"FRAUD_SERVER__HEALTH_PORT": str(health_port)}
    with ManagedServer(spec, files, environment) as server:
        saturation = settings.saturation or find_saturation(
            server.target, traffic.calls, OVERLOAD_P99_MS, client_processes=OVERLOAD_CLIENTS
        )
        calm = saturation / 2
        peak = saturation * settings.overload_factor
        phases = [
            (settings.seconds, calm),
            (settings.overload_seconds, peak),
            (settings.seconds, calm),
        ]
        rows = round(sum(seconds * rate for seconds, rate in phases))
        schedule = phased_schedule(traffic.calls(rows), phases)
        counted_before = server.metrics()
        server_cpu = _cpu_seconds(server.pid)
        with (
            _HealthProbe(f"{LOCAL_HOST}:{health_port}") as health,
            _HealthProbe(server.target) as scoring_port_health,
        ):
            load = ParallelRecordingLoad(server.target, schedule, processes=OVERLOAD_CLIENTS)
            load.begin()
            records = load.join()
        server_cpu = _cpu_seconds(server.pid) - server_cpu
        counted = server.metrics()
    start, end = settings.seconds, settings.seconds + settings.overload_seconds
    length = 2 * settings.seconds + settings.overload_seconds
    scored = answers.scores(records)
    overloaded = answers.between(scored, start, end)
    refused = [r for r in overloaded if r.code != OK]
    shed = [r for r in refused if r.code == "RESOURCE_EXHAUSTED"]
    goodput = sum(r.code == OK for r in overloaded) / settings.overload_seconds
    seconds, per_second, p99 = answers.per_second(scored, length)
    recovered = _recovery(scored, end, length)
    other = [r for r in refused if r.code != "RESOURCE_EXHAUSTED"]
    return Scenario(
        "overload",
        [
            equal("every refusal RESOURCE_EXHAUSTED", len(other), 0, _codes(other)),
            _shed_criterion("refusals (RESOURCE_EXHAUSTED) p99 from due time", shed),
            _shed_criterion("every refusal, whatever its status: p99 from due time", refused),
            at_least(
                "goodput during the overload", round(goodput, 1), round(0.9 * saturation, 1), "/s"
            ),
            equal(
                "health port answered SERVING throughout",
                health.not_serving,
                0,
                f"of {health.checks} checks; on the scoring port "
                f"{scoring_port_health.not_serving} of {scoring_port_health.checks} were not",
            ),
            at_most(
                "p99 back under the budget after the overload",
                round(recovered, 2),
                RECOVERY_SECONDS,
                " s",
            ),
        ],
        figures={
            "saturation_per_second": round(saturation, 1),
            "asked_per_second": round(peak, 1),
            "goodput_per_second": round(goodput, 1),
            "refusals_by_status": _latencies_by_code(refused),
            "score_statuses_by_phase": {
                "before": _code_counts(answers.between(scored, 0, start)),
                "overload": _code_counts(overloaded),
                "after": _code_counts(answers.between(scored, end, math.inf)),
            },
            "outcome_statuses": _codes([r for r in records if r.kind == OUTCOME]),
            "failure_details": _details(refused),
            "server_counted_score_calls": _score_codes(counted_before, counted),
            # gRPC's core's refusals, which the server never read (channelz, at the scrape),
            # beside the refusals the clients saw (every phase, outcomes included).
            "server_refused_unread": round(
                _metric_delta(counted_before, counted, "fraud_rpc_refused_unread_total")
            ),
            "client_cancelled": sum(r.code == "CANCELLED" for r in records),
            "client_processes": OVERLOAD_CLIENTS,
            "client_cpu_seconds": [round(cpu, 1) for cpu in load.cpu_seconds],
            "server_cpu_seconds": round(server_cpu, 1),
            "run_seconds": round(length, 1),
            "calls": len(records),
        },
        series={"answers per second": (seconds, per_second), "p99 per second (ms)": (seconds, p99)},
    )


# --- rolling ----------------------------------------------------------------------------------


def _rolling(settings: ChaosSettings, traffic: _Traffic, files: Path) -> Scenario:
    redis = RedisProcess(files / "redis")
    redis.start()
    environment = {"FRAUD_STATE__BACKEND": "redis", "FRAUD_STATE__URL": redis.url}
    replicas = [
        ManagedServer(
            fraud_serve_spec(f"chaos-rolling-{k}", settings.registry),
            files / f"replica-{k}",
            environment,
        )
        for k in range(REPLICAS)
    ]
    statuses: list[int] = []
    restarts: list[float] = []
    try:
        saturation = settings.saturation or _one_replica_saturation(
            settings, traffic, files, redis, environment
        )
        _start_together(replicas)
        rate = saturation / 2
        length = settings.seconds * (REPLICAS + 1)
        schedule = _steady(traffic, rate, length)
        target = balanced_target([replica.target for replica in replicas])
        load = RecordingLoad(target, schedule, channel_options=CHANNEL_OPTIONS)
        load.begin()
        for turn, replica in enumerate(replicas):
            _sleep_until(load, settings.seconds * (turn + 1))
            statuses.append(replica.stop())
            restarts.append(replica.start())
        records = load.join()
    finally:
        for replica in replicas:
            replica.stop()
        redis.kill()
    logs = [_decision_log_ids(replica.files / "decisions") for replica in replicas]
    uncertain = _overlapping_entities(records, schedule, logs)
    compared = _compare_with_uninterrupted(
        settings, schedule, records, _shared_state_order(logs, records), files, uncertain=uncertain
    )
    scored = answers.scores(records)
    failures = answers.failures(records)
    fallbacks = [r for r in scored if r.code == OK and r.source != MODEL]
    not_deadline = [r for r in fallbacks if r.fallback_reason != "deadline"]
    seconds, per_second, p99 = answers.per_second(scored, length)
    return Scenario(
        "rolling",
        [
            equal("no call fails", len(failures), 0, _codes(failures)),
            equal(
                "every replica stops with status 0",
                sum(status != 0 for status in statuses),
                0,
                f"statuses {statuses}",
            ),
            equal(
                "every answer from the model (deadline fallbacks aside)",
                len(not_deadline),
                0,
                f"{len(fallbacks) - len(not_deadline)} deadline fallbacks",
            ),
            equal(
                "scores stay exact: every answer = an uninterrupted server's fed the same "
                "swipes in the order the shared state took them",
                compared.untouched_mismatches,
                0,
                f"{compared.compared} answers compared, {compared.replayed} swipes replayed in "
                "the order of the replicas' decision logs merged by answer time; left out: "
                f"{compared.touched_mismatches} differing answers on entities of a swipe "
                "absent from the logs or answered by the fallback, "
                f"{compared.uncertain_mismatches} on the {len(uncertain)} entities of calls "
                "that overlapped in time on different replicas (their order unknown)",
            ),
        ],
        figures={
            "saturation_per_second": round(saturation, 1),
            "rate_per_second": round(rate, 1),
            "calls": len(records),
            "answers": sum(r.code == OK for r in scored),
            "compared_answers": compared.compared,
            "differing_answers_left_out": compared.touched_mismatches
            + compared.uncertain_mismatches,
            "entities_of_overlapping_calls": len(uncertain),
            "answered_but_not_in_decision_logs": compared.answered_unlogged,
            "restart_seconds": [round(seconds, 2) for seconds in restarts],
            "p99_ms": round(answers.p99_ms(scored), 2),
            "fallback_reasons": _reasons(scored),
        },
        series={"answers per second": (seconds, per_second), "p99 per second (ms)": (seconds, p99)},
    )


def _one_replica_saturation(
    settings: ChaosSettings,
    traffic: _Traffic,
    files: Path,
    redis: RedisProcess,
    environment: dict[str, str],
) -> float:
    """The saturation of one replica on `redis`: the three share this machine's cores, so
    it is the least they hold together. Measured on a server of its own, and Redis started
    again (empty) after it, so that the shared state holds the schedule's swipes alone, as
    the reference's will."""
    spec = fraud_serve_spec("chaos-rolling-saturation", settings.registry)
    with ManagedServer(spec, files / "saturation", environment) as server:
        saturation = find_saturation(server.target, traffic.calls, OVERLOAD_P99_MS)
    redis.kill()
    redis.start()
    return saturation


def _start_together(servers: Sequence[ManagedServer]) -> None:
    """Start every server at once: each start waits for its own model load."""
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(ManagedServer.start, servers))


def _shared_state_order(logs: Sequence[Sequence[str]], records: Sequence[Record]) -> list[str]:
    """The swipes of the replicas' decision `logs`, in the order their shared state took
    them as far as the client's clock tells.

    A replica takes its swipes one after another (one event loop), so each log keeps its
    order; the logs are merged by a time by which each swipe had been taken: the earliest
    answer, at the client, to it or to any swipe its replica logged after it (so each log's
    times rise). A swipe answered before another was sent comes first; calls that overlapped
    on different replicas may come in either order (`_overlapping_entities`). The lines'
    `logged_at` cannot order them: it is when a batch of lines was written (every 0.2 s)."""
    answered = {r.transaction_id: r.done for r in records if r.kind != OUTCOME and r.code == OK}
    merged: list[list[tuple[float, str]]] = []
    for log in logs:
        taken_by = math.inf
        bounds: list[tuple[float, str]] = []
        for transaction_id in reversed(log):
            taken_by = min(taken_by, answered.get(transaction_id, math.inf))
            bounds.append((taken_by, transaction_id))
        merged.append(bounds[::-1])
    return [transaction_id for _, transaction_id in heapq.merge(*merged)]


def _overlapping_entities(
    records: Sequence[Record], schedule: Schedule, logs: Sequence[Sequence[str]]
) -> frozenset[str]:
    """The cards, terminals and merchants whose swipes and outcomes the shared state may
    have taken in another order than `_shared_state_order` gives: those of calls that
    overlapped in time (from due to answered, as the client saw them) and were swipes two
    replicas answered, or a swipe and an outcome (the outcome log is apart from the
    decisions'); and those of a swipe whose call failed (when the state took it, if it
    did, is not known)."""
    keys = {
        _transaction_id(call): _keys(scoring_pb2.ScoreRequest.FromString(call.payload).transaction)
        for call in schedule.calls
        if call.kind is CallKind.SCORE
    }
    replica_of = {tx: replica for replica, log in enumerate(logs) for tx in log}
    uncertain: set[str] = set()
    calls_by_entity: dict[str, list[tuple[float, float, int | None]]] = {}
    for record in records:
        entities = keys.get(record.transaction_id, set())
        if record.kind != OUTCOME and record.code != OK:
            uncertain |= entities
        # None: the replica is not known (an outcome, or a swipe no log holds), so any
        # overlap with it is one of unknown order.
        replica = None if record.kind == OUTCOME else replica_of.get(record.transaction_id)
        for entity in entities:
            calls_by_entity.setdefault(entity, []).append((record.sent, record.done, replica))
    for entity, calls in calls_by_entity.items():
        calls.sort(key=lambda call: call[0])
        open_calls: list[tuple[float, float, int | None]] = []
        for sent, done, replica in calls:
            open_calls = [call for call in open_calls if call[1] > sent]
            if any(other is None or replica is None or other != replica
                   for _, _, other in open_calls):  # fmt: skip
                uncertain.add(entity)
                break
            open_calls.append((sent, done, replica))
    return frozenset(uncertain)


def _details(records: Sequence[Record]) -> dict[str, int]:
    """Failed calls counted by status and details (the first 60 characters)."""
    counts: dict[str, int] = {}
    for record in records:
        key = f"{record.code}: {record.details[:60]}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _reasons(records: Sequence[Record]) -> str:
    """Fallback answers counted by reason."""
    counts: dict[str, int] = {}
    for record in records:
        if record.code == OK and record.source != MODEL:
            counts[record.fallback_reason] = counts.get(record.fallback_reason, 0) + 1
    return " ".join(f"{reason} {count}" for reason, count in sorted(counts.items())) or "none"


def _shed_criterion(name: str, refused: Sequence[Record]) -> Criterion:
    if not refused:
        return not_judged(name, f"<= {SHED_LIMIT_MS:g} ms", "no call was refused")
    p99 = float(np.percentile([r.done - r.sent for r in refused], 99) * 1e3)
    return at_most(name, round(p99, 2), SHED_LIMIT_MS, " ms", f"{len(refused)} refused")


def _latencies_by_code(records: Sequence[Record]) -> dict[str, dict[str, float]]:
    """Per status: how many, and the p50 and p99 of their time from due to status (ms)."""
    by_code: dict[str, list[float]] = {}
    for record in records:
        by_code.setdefault(record.code, []).append(record.done - record.sent)
    return {
        code: {
            "count": len(times),
            "p50_ms": round(float(np.percentile(times, 50) * 1e3), 2),
            "p99_ms": round(float(np.percentile(times, 99) * 1e3), 2),
        }
        for code, times in sorted(by_code.items())
    }


def _score_codes(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Score calls the server counted meanwhile (`fraud_rpc_requests_total`), by status:
    gRPC's core refuses calls before the server sees them, so these are only its own."""
    prefix = 'fraud_rpc_requests_total{code="'
    counts = {
        key[len(prefix) :].partition('"')[0]: round(_metric_delta(before, after, key))
        for key in after
        if key.startswith(prefix) and key.endswith('rpc="Score"}')
    }
    return {code: count for code, count in sorted(counts.items()) if count}


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _recovery(scored: list[Record], end: float, length: float) -> float:
    """Seconds from `end` to the first second from which every second's answers have a p99
    under `OVERLOAD_P99_MS` and no call fails."""
    for second in range(int(end), int(length)):
        window = [r for r in scored if r.sent >= second]
        good = all(r.code == OK for r in window) and answers.p99_ms(window) <= OVERLOAD_P99_MS
        if good:
            return max(0.0, second - end)
    return float("inf")


# --- shared -----------------------------------------------------------------------------------


class _HealthProbe:
    """Asks grpc.health.v1 every 0.2 s (1 s deadline) on a thread; counts the checks that
    were not answered SERVING."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.checks = 0
        self.not_serving = 0

    def __enter__(self) -> _HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with grpc.insecure_channel(self._target) as channel:
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            while not self._done.wait(0.2):
                self.checks += 1
                try:
                    answer: Any = check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    self.not_serving += answer.status != health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    self.not_serving += 1


def _steady(traffic: _Traffic, rate: float, seconds: float) -> Schedule:
    calls = traffic.calls(round(rate * seconds * 1.1) + 1)
    return _by_time(calls, rate, seconds)


def _by_time(calls: list[Call], rate: float, seconds: float) -> Schedule:
    count = min(len(calls), round(rate * seconds))
    return Schedule(calls[:count], [k / rate for k in range(count)])


def _sleep_until(load: RecordingLoad, second: float) -> None:
    time.sleep(max(0.0, second - load.now()))


def _metric_delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def _per_second_share(
    records: list[Record], length: float, test: Callable[[Record], bool]
) -> list[float]:
    counts = [[0, 0] for _ in range(int(length) + 1)]
    for record in records:
        second = int(record.sent)
        if record.code == OK and 0 <= second < len(counts):
            counts[second][0] += test(record)
            counts[second][1] += 1
    return [good / total if total else float("nan") for good, total in counts]


def _transaction_id(call: Call) -> str:
    if call.kind is CallKind.OUTCOME:
        return scoring_pb2.OutcomeRequest.FromString(call.payload).transaction_id
    return scoring_pb2.ScoreRequest.FromString(call.payload).transaction.transaction_id


def _codes(records: Sequence[Record]) -> str:
    counts = _code_counts(records)
    return " ".join(f"{code} {count}" for code, count in counts.items()) or "-"


def _code_counts(records: Sequence[Record]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.code] = counts.get(record.code, 0) + 1
    return dict(sorted(counts.items()))
