"""Outcomes that cannot erase each other (issue 15, part 2), against a real `fraud-serve`
process over loopback gRPC, its feature state in LMDB:

- genuine outcomes first: transactions scored, each reported fraud by the chargeback feed;
- a reversal: a lower-ranked portal says "genuine" after the feed's fraud, then a
  higher-ranked case tool does; a probe swipe after each shows the terminal risk the
  server computes;
- then 25,000 ReportOutcome calls with made-up ids, from the grpc.aio client with 64
  calls in flight: 7,500 from a caller allowed far above them (each one quarantined, 1.7 MB
  through a quarantine of 256 KiB) and 17,500 from a caller held to its rate (most refused
  with RESOURCE_EXHAUSTED). A quarter of the 100,000 calls it once made, with a quarantine
  and a rate a quarter of theirs: the same flood against the same budget in a quarter of
  the work, the held caller refused as large a share for as long a flood.

The scenario runs once (`run`), the server stopped at its end so that its logs are drained
and its LMDB state can be opened; each test checks one part of what it left.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from service.config.settings import StateSettings
from service.features import FeatureConfig
from service.features.engine import FEATURE_NAMES
from service.grpc_api._proto.fraud.v1 import scoring_pb2_grpc
from service.grpc_api.client import bearer_metadata, build_outcome_request, build_score_request
from service.state.opening import open_state
from tests.metrics_scrape import Samples, scrape, value
from tests.server_process import ServerProcess, server_files
from training.retraining.feedback import label_outcomes, read_outcomes

CALL_TIMEOUT = 30.0  # generous: the machine is shared; no check relies on it running out
REPORT_METHOD = "/fraud.v1.FraudScoring/ReportOutcome"
IN_FLIGHT = 64
FLOODER_CALLS = 7_500
PORTAL_CALLS = 17_500
GENUINE = 48  # transactions reported fraud before the flood, over TERMINALS terminals
TERMINALS = 4
QUARANTINE_BYTES = 256 << 10
QUARANTINE_SEGMENT_BYTES = 16 << 10
# A quarantine line is under 256 bytes; the writer appends 32 lines at a time.
QUARANTINE_SLACK = 32 * 256
PORTAL_RATE = (12.5, 125)  # per second, burst: the default caller's rate here
# The transactions labelled lie within the 1-day window delayed by the 7-day label delay
# of a swipe scored now, so the probes' terminal risk shows what the state counted.
EVENT_AGE = timedelta(days=7, hours=12)
DAY_NS = 86_400 * 10**9


def _token(caller: str) -> str:
    return f"token-of-{caller}-0123456789abcdef"


def _caller(name: str, role: str, rank: int = 0, **limits: float) -> dict[str, Any]:
    digest = hashlib.sha256(_token(name).encode()).hexdigest()
    return {"name": name, "roles": [role], "token_sha256": [digest], "rank": rank, **limits}


CALLERS = [
    _caller("pos", "score"),
    _caller("chargebacks", "report", rank=2),
    _caller("case-tool", "report", rank=3),
    _caller("portal", "report"),
    _caller("flooder", "report", report_per_second=1e6, report_burst=1_000_000),
]


@dataclass
class Reversal:
    """The reversed transaction, its event time and its three reports' times, in ns."""

    transaction_id: str
    event_ns: int
    fraud_by_feed_ns: int
    genuine_by_portal_ns: int
    genuine_by_case_tool_ns: int


@dataclass
class Run:
    """What the scenario left: answers by caller, the server's metrics around the flood, its
    files, the features its probes were scored with, its state's records."""

    genuine: list[str]
    reversal: Reversal
    codes: dict[str, Counter[str]]
    before: Samples
    after: Samples
    outcomes: Path
    probes: dict[str, dict[str, float]]
    labels: dict[str, tuple[bool, int]]  # transaction id -> (is_fraud, label rank) held

    def moved(self, name: str, **labels: str) -> float:
        return value(self.after, name, **labels) - value(self.before, name, **labels)


class Server:
    """The `fraud-serve` process and sync stubs for its callers."""

    def __init__(self, directory: Path) -> None:
        (directory / "models").mkdir()
        environment = server_files(directory) | {
            "FRAUD_AUTH__CALLERS": json.dumps(CALLERS),
            "FRAUD_REPORT_LIMIT__PER_SECOND": str(PORTAL_RATE[0]),
            "FRAUD_REPORT_LIMIT__BURST": str(PORTAL_RATE[1]),
            "FRAUD_OUTCOME_QUARANTINE__MAX_BYTES": str(QUARANTINE_BYTES),
            "FRAUD_OUTCOME_QUARANTINE__SEGMENT_BYTES": str(QUARANTINE_SEGMENT_BYTES),
            "FRAUD_LOGGING__SAMPLE_RATE": "0",
            # Every swipe scored and counted, however busy the shared machine: one past the
            # default 20 ms budget is answered "deadline" and not counted, and the feed's
            # report of it is then NOT_FOUND.
            "FRAUD_BUDGET__SERVER_BUDGET_MS": "5000",
        }
        self.process = ServerProcess(
            "--registry", str(directory / "models"), "--host", "127.0.0.1", "--port", "0",
            "--metrics-port", "0", environment=environment,
        )  # fmt: skip
        listening = self.process.wait_for("listening")
        self.target = f"127.0.0.1:{listening['port']}"
        self.metrics_url = f"http://127.0.0.1:{listening['metrics_port']}/metrics"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = scoring_pb2_grpc.FraudScoringStub(self.channel)

    def score(self, transaction_id: str, terminal: str, when: datetime) -> None:
        request = build_score_request(
            transaction_id, f"card-{transaction_id}", terminal, 1250, "EUR", when
        )
        self.stub.Score(request, timeout=CALL_TIMEOUT, metadata=bearer_metadata(_token("pos")))

    def report(self, caller: str, transaction_id: str, is_fraud: bool, when_ns: int) -> None:
        when = datetime.fromtimestamp(when_ns / 1e9, UTC)
        outcome = build_outcome_request(transaction_id, is_fraud, when)
        metadata = bearer_metadata(_token(caller))
        self.stub.ReportOutcome(outcome, timeout=CALL_TIMEOUT, metadata=metadata)

    def stop(self) -> None:
        self.channel.close()
        self.process.signal(signal.SIGTERM)
        assert self.process.wait() == 0, self.process.text()


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 10**9


async def _flood(target: str) -> dict[str, Counter[str]]:
    """The made-up reports, the two callers' interleaved, IN_FLIGHT at a time; each call's
    status by caller (read from the call, no exception raised per refusal)."""
    now = datetime.now(UTC)
    calls = [("flooder", number) for number in range(FLOODER_CALLS)]
    calls += [("portal", number) for number in range(PORTAL_CALLS)]
    calls.sort(key=lambda call: call[1] / (FLOODER_CALLS if call[0] == "flooder" else PORTAL_CALLS))
    requests = iter(
        (caller, build_outcome_request(f"made-up-{caller}-{number}", True, now).SerializeToString())
        for caller, number in calls
    )
    metadata = {caller: bearer_metadata(_token(caller)) for caller in ("flooder", "portal")}
    codes: dict[str, Counter[str]] = {"flooder": Counter(), "portal": Counter()}
    async with grpc.aio.insecure_channel(target) as channel:
        report: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(REPORT_METHOD)

        async def sender() -> None:
            for caller, payload in requests:
                call = report(payload, timeout=CALL_TIMEOUT, metadata=metadata[caller])
                codes[caller][(await call.code()).name] += 1

        await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
    return codes


def _outcomes_written(url: str, count: int) -> Samples:
    """The metrics once the outcome log has written `count` outcomes."""
    deadline = time.monotonic() + 60
    while value(samples := scrape(url), "fraud_record_log_written_total", log="outcomes") < count:
        assert time.monotonic() < deadline, f"{count} outcomes not written within 60 s"
        time.sleep(0.1)
    return samples


def _quarantine_handled(samples: Samples) -> float:
    """Quarantined outcomes the quarantine's writer has written or dropped."""
    dropped = sum(
        value(samples, "fraud_record_log_dropped_total", log="quarantine", reason=reason)
        for reason in ("queue_full", "write_error", "closed")
    )
    return value(samples, "fraud_record_log_written_total", log="quarantine") + dropped


def _quarantine_settled(url: str, before: Samples) -> Samples:
    """The metrics once every outcome quarantined since `before` is written or dropped."""
    quarantined = "fraud_outcomes_quarantined_total"
    deadline = time.monotonic() + 60
    while True:
        samples = scrape(url)
        waiting = value(samples, quarantined, reason="unknown_transaction") - value(
            before, quarantined, reason="unknown_transaction"
        )
        if _quarantine_handled(samples) - _quarantine_handled(before) >= waiting:
            return samples
        assert time.monotonic() < deadline, "the quarantine did not catch up within 60 s"
        time.sleep(0.2)


def _probe_features(decisions: Path, probes: set[str]) -> dict[str, dict[str, float]]:
    found = {}
    for segment in decisions.glob("decisions-*.jsonl"):
        for line in segment.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record["transaction_id"] in probes:
                found[record["transaction_id"]] = dict(
                    zip(FEATURE_NAMES, record["features"], strict=True)
                )
    return found


def _held_labels(state: Path, transaction_ids: list[str]) -> dict[str, tuple[bool, int]]:
    store = open_state(StateSettings(backend="lmdb", path=state), FeatureConfig())
    try:
        held = {}
        for transaction_id in transaction_ids:
            with store.session() as session:
                record = session.transaction(transaction_id)
            assert record is not None, transaction_id
            held[transaction_id] = (record.is_fraud, record.label_rank)
        return held
    finally:
        store.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    directory = tmp_path_factory.mktemp("flood")
    server = Server(directory)
    try:
        now = datetime.now(UTC)
        event = now - EVENT_AGE
        genuine = [f"genuine-{number}" for number in range(GENUINE)]
        for number, transaction_id in enumerate(genuine):
            server.score(transaction_id, f"terminal-{number % TERMINALS}", event)
            server.report("chargebacks", transaction_id, True, _ns(event) + DAY_NS)

        reversal = Reversal(
            "reversed",
            _ns(event),
            _ns(event) + DAY_NS,
            _ns(event) + 2 * DAY_NS,
            _ns(event) + 3 * DAY_NS,
        )
        server.score(reversal.transaction_id, "reversal-terminal", event)
        server.report("chargebacks", reversal.transaction_id, True, reversal.fraud_by_feed_ns)
        server.report("portal", reversal.transaction_id, False, reversal.genuine_by_portal_ns)
        server.score("probe-after-portal", "reversal-terminal", now)
        server.report("case-tool", reversal.transaction_id, False, reversal.genuine_by_case_tool_ns)
        server.score("probe-after-case-tool", "reversal-terminal", now)

        before = _outcomes_written(server.metrics_url, GENUINE + 3)
        codes = asyncio.run(_flood(server.target))
        after = _quarantine_settled(server.metrics_url, before)
        for terminal in range(TERMINALS):
            server.score(f"probe-terminal-{terminal}", f"terminal-{terminal}", now)
    finally:
        server.stop()
    probes = {f"probe-terminal-{terminal}" for terminal in range(TERMINALS)}
    probes |= {"probe-after-portal", "probe-after-case-tool"}
    return Run(
        genuine=genuine,
        reversal=reversal,
        codes=codes,
        before=before,
        after=after,
        outcomes=directory / "outcomes",
        probes=_probe_features(directory / "decisions", probes),
        labels=_held_labels(directory / "state", [*genuine, reversal.transaction_id]),
    )


def _outcome_lines(run: Run, kind: str) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for segment in sorted(run.outcomes.glob(f"{kind}-*.jsonl"))
        for line in segment.read_text(encoding="utf-8").splitlines()
    ]


def test_the_flood_leaves_every_genuine_outcome_in_the_outcome_log(run: Run) -> None:
    """After 25,000 made-up reports, the outcome log holds every report made before them,
    each with its caller and rank, and nothing of the flood."""
    lines = _outcome_lines(run, "outcomes")
    reports = [
        (line["transaction_id"], line["is_fraud"], line["caller"], line["caller_rank"])
        for line in lines
    ]
    assert reports[:GENUINE] == [
        (transaction_id, True, "chargebacks", 2) for transaction_id in run.genuine
    ]
    assert not [line for line in lines if line["transaction_id"].startswith("made-up-")]
    assert len(lines) == GENUINE + 3  # and the reversal's three reports


def test_the_flood_leaves_every_genuine_outcome_in_the_state(run: Run) -> None:
    """Each transaction reported fraud is held as fraud at the feed's rank, and the terminal
    risk of a swipe scored after the flood counts every one of them."""
    assert {run.labels[transaction_id] for transaction_id in run.genuine} == {(True, 2)}
    for terminal in range(TERMINALS):
        features = run.probes[f"probe-terminal-{terminal}"]
        assert features["terminal_tx_count_1d_delayed"] == GENUINE / TERMINALS
        assert features["terminal_risk_1d"] == 1.0


def test_the_flood_is_quarantined_within_its_budget_and_counted(run: Run) -> None:
    """Every made-up report is answered NOT_FOUND (quarantined) or, from the caller held to
    its rate, RESOURCE_EXHAUSTED; the counters say as much, call for call; the quarantine's
    segments stay within their budget, and hold nothing but the flood's lines."""
    flooder, portal = run.codes["flooder"], run.codes["portal"]
    assert flooder == Counter({"NOT_FOUND": FLOODER_CALLS})
    assert set(portal) == {"NOT_FOUND", "RESOURCE_EXHAUSTED"}
    assert portal.total() == PORTAL_CALLS
    assert portal["RESOURCE_EXHAUSTED"] > PORTAL_CALLS / 2
    not_found = flooder["NOT_FOUND"] + portal["NOT_FOUND"]
    assert run.moved("fraud_outcomes_quarantined_total", reason="unknown_transaction") == not_found
    assert (
        run.moved("fraud_outcomes_rate_limited_total", caller="portal")
        == portal["RESOURCE_EXHAUSTED"]
    )
    assert run.moved("fraud_outcomes_rate_limited_total", caller="flooder") == 0
    assert run.moved("fraud_record_log_written_total", log="quarantine") == not_found
    assert run.moved("fraud_record_log_written_total", log="outcomes") == 0

    segments = list(run.outcomes.glob("quarantine-*.jsonl"))
    size = sum(segment.stat().st_size for segment in segments)
    assert size <= QUARANTINE_BYTES + QUARANTINE_SEGMENT_BYTES + QUARANTINE_SLACK
    kept = _outcome_lines(run, "quarantine")
    assert 0 < len(kept) < not_found  # retention deleted the oldest
    assert {(line["reason"], line["caller"]) for line in kept} <= {
        ("unknown_transaction", "flooder"),
        ("unknown_transaction", "portal"),
    }


def test_a_lower_ranked_reversal_does_not_change_the_label_retrain_reads(run: Run) -> None:
    """retrain's reading of the outcome log labels the reversed transaction fraud after the
    portal's "genuine" (rank 0 against the feed's 2) and genuine after the case tool's (3);
    the three reports are kept side by side, each with its caller and rank."""
    reversal = run.reversal
    lines = [
        line
        for line in _outcome_lines(run, "outcomes")
        if line["transaction_id"] == reversal.transaction_id
    ]
    assert [(line["caller"], line["caller_rank"], line["is_fraud"]) for line in lines] == [
        ("chargebacks", 2, True),
        ("portal", 0, False),
        ("case-tool", 3, False),
    ]
    outcomes = read_outcomes(run.outcomes)

    def label_as_of(as_of_ns: int) -> int:
        ids = np.array([reversal.transaction_id], dtype=object)
        events = np.array([reversal.event_ns], dtype=np.int64)
        labelled = label_outcomes(ids, events, outcomes, as_of_ns=as_of_ns, label_delay_ns=DAY_NS)
        return int(labelled.label[0])

    assert label_as_of(reversal.fraud_by_feed_ns) == 1
    assert label_as_of(reversal.genuine_by_portal_ns) == 1
    assert label_as_of(reversal.genuine_by_case_tool_ns) == 0


def test_the_served_terminal_risk_follows_the_same_rule(run: Run) -> None:
    """The server's state kept the feed's fraud through the portal's reversal (a swipe then
    sees the terminal's risk at 1) and took the case tool's (then 0), which it holds."""
    assert run.probes["probe-after-portal"]["terminal_risk_1d"] == 1.0
    assert run.probes["probe-after-case-tool"]["terminal_risk_1d"] == 0.0
    assert run.labels[run.reversal.transaction_id] == (False, 3)
