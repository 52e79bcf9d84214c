"""A `fraud-serve` process started on a registry whose champion is refused (issue 16, "no
crash loop"): it serves the newest earlier champion that verifies, or, with none, stays up
NOT_SERVING and comes up when a sound version is promoted. Real processes, real gRPC over
loopback, real registry files; aliases moved with the registry's own writer.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.grpc_api.client import build_score_request
from service.grpc_api.server import LIVENESS_SERVICE_NAME
from service.model.artifact import ONNX_MODEL_FILE
from service.model.registry import CHAMPION, Registry
from tests.conftest import TrainedModel
from tests.factories import flip_first_byte
from tests.metrics_scrape import scrape, value
from tests.server_process import ServerProcess
from tests.service.registry_copies import copy_registry, edit_manifest, publish_copy
from training.registry.publishing import promote

BROKEN = "20990101T000000Z-0badc0de"
SOUND = "20990102T000000Z-00c0ffee"
POLL_SECONDS = 0.1
WAIT_SECONDS = 60.0  # bound on any wait for the server to follow the registry
CALL_TIMEOUT = 10.0
# The checks and loads a start makes are the same with a fallback, plus one refused check:
# far inside the two minutes the Kubernetes startup probe allows (deploy/kubernetes).
FALLBACK_START_SECONDS = 30.0

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

StartProcess = Callable[..., ServerProcess]


@pytest.fixture
def registry(trained_model: TrainedModel, tmp_path: Path) -> Path:
    """The trained registry (its champion promoted by training), then BROKEN, a copy of it,
    promoted as champion by the registry's writer and broken afterwards: a truncated-looking
    ONNX file that no longer matches its checksum."""
    root = copy_registry(trained_model, tmp_path / "models")
    publish_copy(root, BROKEN)
    promote(root, BROKEN, reason="test: the new champion")
    flip_first_byte(root / "versions" / BROKEN / ONNX_MODEL_FILE)
    return root


def _start(start_process: StartProcess, registry: Path) -> ServerProcess:
    return start_process(
        "--registry", str(registry), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
        environment={"FRAUD_MODELS__POLL_SECONDS": str(POLL_SECONDS)},
    )  # fmt: skip


def _records(process: ServerProcess, event: str) -> list[dict[str, Any]]:
    """Every JSON log line of `event` the process has written so far."""
    records = []
    for line in process.output:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            records.append(record)
    return records


def _timestamp(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["timestamp"]).timestamp()


class _Client:
    """Health, Score and GetModelInfo of one server, over loopback."""

    def __init__(self, port: int) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._health: Any = health_pb2_grpc.HealthStub(channel)  # its stubs lack the methods
        self._scoring = scoring_pb2_grpc.FraudScoringStub(channel)
        self._scored = 0

    def health(self, service: str = "") -> int:
        request = health_pb2.HealthCheckRequest(service=service)
        status: int = self._health.Check(request, timeout=CALL_TIMEOUT).status
        return status

    def score(self) -> scoring_pb2.ScoreResponse:
        self._scored += 1
        when = datetime.now(UTC) - timedelta(hours=1)
        request = build_score_request(f"tx-{self._scored}", "card-1", "term-1", 1_250, "EUR", when)
        return self._scoring.Score(request, timeout=CALL_TIMEOUT)

    def model_version(self) -> str:
        info = self._scoring.GetModelInfo(scoring_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT)
        return info.version

    def wait_until(self, condition: Callable[[], bool], what: str) -> float:
        """Seconds until `condition` held, polled; fails after WAIT_SECONDS."""
        started = time.monotonic()
        while not condition():
            assert time.monotonic() - started < WAIT_SECONDS, f"never {what}"
            time.sleep(0.02)
        return time.monotonic() - started


def test_a_refused_champion_at_start_serves_the_previous_version(
    start_process: StartProcess, registry: Path, trained_model: TrainedModel
) -> None:
    """The champion alias names BROKEN: the server starts on the previous champion, says so
    in its logs and metrics, leaves the alias alone, and serves BROKEN once it is repaired."""
    previous = trained_model.version
    alias_before = Registry(registry).alias_path(CHAMPION).read_bytes()

    process = _start(start_process, registry)
    serving = process.wait_for("serving")

    assert serving["model_version"] == previous
    (fallback,) = _records(process, "champion_fallback")
    assert (fallback["refused_version"], fallback["reason"]) == (BROKEN, "checksum_mismatch")
    assert fallback["version"] == previous
    (refused,) = _records(process, "model_refused")
    assert (refused["alias"], refused["version"]) == (CHAMPION, BROKEN)
    assert "cannot_serve_yet" not in process.events()
    (starting,) = _records(process, "starting")
    assert _timestamp(serving) - _timestamp(starting) < FALLBACK_START_SECONDS
    client = _Client(serving["port"])
    assert client.health() == SERVING
    assert client.model_version() == previous
    answer = client.score()
    assert (answer.decision_source, answer.model_version) == (
        scoring_pb2.DECISION_SOURCE_MODEL,
        previous,
    )
    samples = scrape(f"http://127.0.0.1:{serving['metrics_port']}/metrics")
    reason = {"alias": CHAMPION, "reason": "checksum_mismatch"}
    assert value(samples, "fraud_model_refusals_total", **reason) == 1
    assert value(samples, "fraud_model_info", alias=CHAMPION, version=previous) == 1
    assert ("fraud_model_info", frozenset({"alias": CHAMPION, "version": BROKEN}.items())) not in (
        samples
    )
    assert Registry(registry).alias_path(CHAMPION).read_bytes() == alias_before

    flip_first_byte(registry / "versions" / BROKEN / ONNX_MODEL_FILE)  # repaired
    client.wait_until(lambda: client.model_version() == BROKEN, "served the repaired champion")
    assert client.score().model_version == BROKEN
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def test_with_no_version_that_verifies_the_server_waits_not_serving_for_a_sound_promotion(
    start_process: StartProcess, registry: Path, trained_model: TrainedModel
) -> None:
    """Both champions broken, a sound version published (the newest) but never champion: the
    process stays up, NOT_SERVING, scoring by the fallback rules and saying why once;
    promoting the sound version brings it up within a few polls."""
    versions = registry / "versions"
    flip_first_byte(versions / BROKEN / ONNX_MODEL_FILE)  # its checksum right again, but
    edit_manifest(versions / BROKEN, _shift_golden_scores)  # refused for its golden sample
    flip_first_byte(versions / trained_model.version / ONNX_MODEL_FILE)
    pristine = Registry(trained_model.registry).artifact_dir(trained_model.version)
    shutil.copytree(pristine, versions / SOUND)
    edit_manifest(versions / SOUND, lambda manifest: manifest.update(version=SOUND))

    process = _start(start_process, registry)
    listening = process.wait_for("listening")
    waiting = process.wait_for("cannot_serve_yet")

    assert (waiting["version"], waiting["reason"]) == (BROKEN, "golden_mismatch")
    assert waiting["passed_over"] == [f"{trained_model.version}: checksum_mismatch"]
    client = _Client(listening["port"])
    assert client.health() == NOT_SERVING
    # Alive all the same: the liveness probe must not restart a process waiting for a fix.
    assert client.health(LIVENESS_SERVICE_NAME) == SERVING
    answer = client.score()
    assert answer.decision_source == scoring_pb2.DECISION_SOURCE_FALLBACK
    assert answer.fallback_reason == "model_unavailable"
    with pytest.raises(grpc.RpcError) as no_model:
        client.model_version()
    assert no_model.value.code() == grpc.StatusCode.UNAVAILABLE
    time.sleep(10 * POLL_SECONDS)
    assert process.process.poll() is None
    assert client.health() == NOT_SERVING
    assert process.events().count("cannot_serve_yet") == 1
    assert "serving" not in process.events()

    promote(registry, SOUND, reason="test: the fix")
    took = client.wait_until(lambda: client.health() == SERVING, "turned SERVING")
    assert took < 10.0  # a poll and one load, about 0.5 s: the margin is the shared machine's
    assert client.model_version() == SOUND
    assert process.wait_for("serving")["model_version"] == SOUND
    assert client.score().decision_source == scoring_pb2.DECISION_SOURCE_MODEL
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def _shift_golden_scores(manifest: dict[str, Any]) -> None:
    golden = manifest["golden_sample"]
    golden["scores"] = [min(score + 0.01, 1.0) for score in golden["scores"]]
