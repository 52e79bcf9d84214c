"""The composition root: `create_app` wires one working server from its settings alone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.app import App, create_app
from service.config.settings import RecordLogSettings, ServerSettings, ServeSettings
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.model.registry import RegistryError
from tests.conftest import TrainedModel
from tests.service.registry_copies import copy_registry
from training.retraining.feedback import read_decision_log, read_outcomes

FEATURE_COUNT = 33


def _settings(registry: Path, records: Path) -> ServeSettings:
    return ServeSettings(
        registry=registry,
        server=ServerSettings(host="127.0.0.1", port=0),
        decision_log=RecordLogSettings(directory=records / "decisions"),
        outcome_log=RecordLogSettings(directory=records / "outcomes"),
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


def test_create_app_without_champion_opens_nothing(tmp_path: Path) -> None:
    """An empty registry is refused before any record log or port is opened."""

    async def scenario() -> None:
        await create_app(_settings(tmp_path / "registry", tmp_path))

    with pytest.raises(RegistryError, match="champion"):
        asyncio.run(scenario())
    assert not (tmp_path / "decisions").exists()
    assert not (tmp_path / "outcomes").exists()
