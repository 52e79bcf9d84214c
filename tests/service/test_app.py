"""The composition root: `create_app` wires one working server from its settings alone."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from service.app import App, build_scorer, create_app, startup_feature_config
from service.config.settings import RecordLogSettings, ServerSettings, ServeSettings, StateSettings
from service.features import FeatureConfig, FeatureEngine
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.grpc_api.server import BindError
from service.model.artifact import MANIFEST_FILE
from service.model.registry import Registry
from service.model.store import ModelStore
from tests.conftest import TrainedModel
from tests.factories import raw_transaction
from tests.service.registry_copies import copy_registry, edit_manifest, publish_copy
from training.registry.publishing import promote
from training.retraining.feedback import read_decision_log, read_outcomes

FEATURE_COUNT = 33
EARLIER_VERSION = "20990101T000000Z-0000000a"
NEWEST_VERSION = "20990102T000000Z-0000000b"


def _settings(registry: Path, records: Path) -> ServeSettings:
    return ServeSettings(
        registry=registry,
        server=ServerSettings(host="127.0.0.1", port=0),
        decision_log=RecordLogSettings(directory=records / "decisions"),
        outcome_log=RecordLogSettings(directory=records / "outcomes"),
        state=StateSettings(path=records / "state"),
    )


def _request(number: int) -> scoring_pb2.ScoreRequest:
    request = scoring_pb2.ScoreRequest()
    tx = request.transaction
    tx.transaction_id = f"tx-{number}"
    tx.card_id = "card-1"
    tx.terminal_id = "term-1"
    tx.amount_minor = 2_500 + number
    tx.currency = "EUR"
    tx.timestamp.FromSeconds(1_704_067_200 + 60 * number)
    return request


async def _serve_and_call(app: App) -> tuple[int, list[scoring_pb2.ScoreResponse], str]:
    """Start `app`, load its champion, then call it as a backend would."""
    await app.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)  # its type stubs lack the methods
        before = (await health.Check(health_pb2.HealthCheckRequest())).status
        model = await app.load_champion()
        stub = scoring_pb2_grpc.FraudScoringStub(channel)
        answers = [await stub.Score(_request(number)) for number in (1, 2)]
        outcome = scoring_pb2.OutcomeRequest(transaction_id="tx-1", is_fraud=True)
        outcome.reported_at.FromSeconds(1_704_067_200 + 3_600)
        await stub.ReportOutcome(outcome)
    await app.stop(0)
    assert model is not None
    return before, answers, model.version


def test_create_app_serves_the_champion_and_keeps_its_records(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    """NOT_SERVING before the champion loads; then scores by it, and every decision (with
    its features) and outcome reaches the records that retraining reads."""

    async def scenario() -> tuple[int, list[scoring_pb2.ScoreResponse], str]:
        registry = copy_registry(trained_model, tmp_path / "registry")
        app = await create_app(_settings(registry, tmp_path))
        try:
            return await _serve_and_call(app)
        finally:
            await app.stop(0)
            app.close()

    before, answers, version = asyncio.run(scenario())

    assert before == health_pb2.HealthCheckResponse.NOT_SERVING
    assert [answer.model_version for answer in answers] == [version, version]
    assert [answer.decision_source for answer in answers] == [scoring_pb2.DECISION_SOURCE_MODEL] * 2
    decisions = read_decision_log(tmp_path / "decisions", feature_count=FEATURE_COUNT)
    assert list(decisions.frame["transaction_id"]) == ["tx-1", "tx-2"]
    assert decisions.has_features.all()
    assert list(decisions.frame["score"]) == [answer.score for answer in answers]
    outcomes = read_outcomes(tmp_path / "outcomes")
    assert list(outcomes.frame["transaction_id"]) == ["tx-1"]


def _record_writers() -> set[threading.Thread]:
    """The record logs' writer threads alive in this process (other tests' included)."""
    names = {"decisions-log", "outcomes-log"}
    return {thread for thread in threading.enumerate() if thread.name in names}


def test_create_app_without_champion_answers_by_the_fallback_rules_not_serving(
    tmp_path: Path,
) -> None:
    """An empty registry starts a server that waits for a champion: health NOT_SERVING, the
    first look finds no model, and a swipe gets the fallback decision ("model_unavailable")."""

    async def scenario() -> tuple[int, bool, scoring_pb2.ScoreResponse]:
        app = await create_app(_settings(tmp_path / "registry", tmp_path))
        try:
            await app.start()
            model = await app.load_champion()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                health: Any = health_pb2_grpc.HealthStub(channel)
                status = (await health.Check(health_pb2.HealthCheckRequest())).status
                answer = await scoring_pb2_grpc.FraudScoringStub(channel).Score(_request(1))
            return status, model is None, answer
        finally:
            await app.stop(0)
            app.close()

    status, no_model, answer = asyncio.run(scenario())

    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert no_model
    assert answer.decision_source == scoring_pb2.DECISION_SOURCE_FALLBACK
    assert answer.fallback_reason == "model_unavailable"


def test_create_app_that_cannot_bind_leaves_nothing_open(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    """A port in use fails the start after the record logs and the feature state opened:
    they are closed again, no writer thread is left running."""
    registry = copy_registry(trained_model, tmp_path / "registry")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = _settings(registry, tmp_path).model_copy(
            update={"server": ServerSettings(host="127.0.0.1", port=taken.getsockname()[1])}
        )

        async def scenario() -> None:
            await create_app(settings)

        writers_before = _record_writers()
        with pytest.raises(BindError):
            asyncio.run(scenario())
    assert _record_writers() == writers_before


def test_the_feature_config_at_start_is_the_champions_from_its_manifest(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    """The engine computes what the champion was trained with, read before any model loads."""
    registry = copy_registry(trained_model, tmp_path / "registry")
    champion = Registry(registry).artifact_dir(trained_model.version)
    edit_manifest(champion, lambda manifest: manifest["feature_config"].update(small_amount=3.0))
    assert startup_feature_config(registry) == FeatureConfig(small_amount=3.0)


def test_without_a_readable_champion_manifest_the_feature_config_is_the_earlier_champions(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    """The champion's manifest gone, the config is that of the newest earlier champion whose
    manifest reads: the version the store falls back to when it verifies."""
    registry = copy_registry(trained_model, tmp_path / "registry")
    earlier = publish_copy(registry, EARLIER_VERSION)
    edit_manifest(earlier, lambda manifest: manifest["feature_config"].update(small_amount=3.0))
    promote(registry, EARLIER_VERSION, reason="test: trained with other settings")
    newest = publish_copy(registry, NEWEST_VERSION)
    promote(registry, NEWEST_VERSION, reason="test: the champion")
    (newest / MANIFEST_FILE).unlink()
    assert startup_feature_config(registry) == FeatureConfig(small_amount=3.0)


def test_without_any_readable_model_the_feature_config_is_the_default_and_logged(
    tmp_path: Path,
) -> None:
    """An empty registry: the default settings, with a warning that a model trained with
    others will be refused until the server restarts."""
    with capture_logs() as lines:
        config = startup_feature_config(tmp_path / "empty")
    assert config == FeatureConfig()
    (warning,) = [line for line in lines if line["event"] == "default_feature_config"]
    assert warning["log_level"] == "warning"
    assert warning["feature_config"] == FeatureConfig().model_dump()


def test_a_scorer_pairs_no_model_with_an_engine_computing_other_features(
    trained_model: TrainedModel,
) -> None:
    """A model trained with another label delay would read other features: refused."""
    store = ModelStore(trained_model.registry)
    store.load_champion()
    engine = FeatureEngine(FeatureConfig(label_delay_days=3))
    with pytest.raises(ValueError, match="feature engine's config"):
        build_scorer(ServeSettings(), engine, store)


def _decisions_counted() -> float:
    """fraud_decisions_total summed over its series, in this process."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "fraud_decisions"
        for sample in family.samples
        if sample.name == "fraud_decisions_total"
    )


def test_a_repeat_is_answered_again_but_counted_as_one_decision(
    trained_model: TrainedModel,
) -> None:
    """A retry answered from the idempotency cache is not a second decision in the metrics
    (a retried decline would otherwise show as two)."""
    store = ModelStore(trained_model.registry)
    champion = store.load_champion()
    scorer = build_scorer(ServeSettings(), FeatureEngine(champion.manifest.feature_config), store)
    before = _decisions_counted()
    first = scorer.score(raw_transaction(1))
    assert scorer.score(raw_transaction(1)) is first
    assert _decisions_counted() - before == 1
