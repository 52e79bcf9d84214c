"""Lists and rules behind a real loopback server: `ChangeList` needs the admin role (and a
server that cannot sign refuses it where lists must be signed), rule hits are counted per
rule, and a shadow rule set counts what it would decide while deciding nothing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pytest

from service.config.settings import AuthSettings, CallerSettings, ServerSettings, ServeSettings
from service.core.domain import EntryMode
from service.core.scoring import FallbackPolicy, Scorer
from service.core.validation import ScoringLimits
from service.features import FeatureEngine
from service.features.engine import FEATURE_NAMES
from service.grpc_api._proto.fraud.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
)
from service.grpc_api.client import build_score_request
from service.grpc_api.server import build_server, create_health
from service.model.loading import LoadedModel
from service.model.registry import CHALLENGER
from service.model.rule_shadow import RuleShadow
from service.model.rule_store import RuleStore
from service.model.rule_writer import publish
from service.model.signatures import UNCHECKED, SignaturePolicy
from service.model.store import ModelStore
from service.model.watcher import ModelWatcher
from service.observability.logs import RequestLogSampler
from service.observability.rule_metrics import RuleHitMetrics
from tests.conftest import TrainedModel
from tests.process_metrics import sample_value
from tests.service.registry_copies import copy_registry
from training.registry.signing import generate_key_pair

if TYPE_CHECKING:
    from service.grpc_api._proto.fraud.v1.admin_pb2_grpc import ModelAdminAsyncStub
    from service.grpc_api._proto.fraud.v1.scoring_pb2_grpc import FraudScoringAsyncStub

T = TypeVar("T")
ADMIN_TOKEN = "ana-the-analyst-token-0123456789"
POS_TOKEN = "pos-gateway-token-0123456789abc"
TIMEOUT = 10.0  # generous: the machine is shared; no test relies on it running out
BIG_CNP = {"id": "big_cnp", "action": "decline", "reason_code": "LARGE_CARD_NOT_PRESENT",
           "when": {"all": [{"field": "amount", "op": ">", "value": 5000},
                            {"field": "card_present", "op": "==", "value": False}]}}  # fmt: skip
SHADOW_ALL = {"id": "shadow_everything", "action": "decline", "reason_code": "EVERYTHING",
              "when": {"field": "amount", "op": ">", "value": 0}}  # fmt: skip


def _metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _settings() -> ServeSettings:
    def caller(name: str, role: str, token: str) -> CallerSettings:
        digest = hashlib.sha256(token.encode()).hexdigest()
        return CallerSettings(name=name, roles=[role], token_sha256=[digest])

    return ServeSettings(
        server=ServerSettings(host="127.0.0.1", port=0),
        auth=AuthSettings(
            callers=[caller("ana", "admin", ADMIN_TOKEN), caller("pos", "score", POS_TOKEN)]
        ),
    )


def _serve(
    registry: Path,
    scenario: Any,
    signatures: SignaturePolicy = UNCHECKED,
) -> Any:
    """Serve `registry` with its lists and rules (hit metrics and the shadow listening) and
    run `scenario(admin stub, scoring stub, rule store)`."""

    async def main() -> Any:
        rules = RuleStore(registry, FEATURE_NAMES, signatures=signatures)
        watcher = ModelWatcher(ModelStore(registry), rules)
        await watcher.refresh()
        model = watcher.store.current
        assert model is not None
        scorer: Scorer[LoadedModel] = Scorer(
            FeatureEngine(model.manifest.feature_config),
            watcher.store,
            tokenizer=_settings().card_tokenizer(),  # the one ChangeList tokenises with
            limits=ScoringLimits(),
            fallback=FallbackPolicy(),
            answer_listeners=[
                RuleHitMetrics(),
                RuleShadow(rules, log_sampler=RequestLogSampler(0)),
            ],
            rules=rules,
        )
        server, port = build_server(_settings(), scorer, await create_health(), models=watcher)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                admin = admin_pb2_grpc.ModelAdminStub(channel)
                scoring = scoring_pb2_grpc.FraudScoringStub(channel)
                result: Coroutine[Any, Any, Any] = scenario(admin, scoring, rules)
                return await result
        finally:
            await server.stop(0)

    return asyncio.run(main())


def _hits(rule_set: str, rule: str) -> float:
    labels = {"rule_set": rule_set, "rule": rule}
    return sample_value("fraud_rule_hits_total", labels) or 0.0


def _swipe(number: int, card: str = "card-7", **changes: Any) -> scoring_pb2.ScoreRequest:
    fields: dict[str, Any] = {"merchant_id": "m-1", "mcc": 5411, "country": "FR",
                              "entry_mode": EntryMode.CHIP, "card_present": True}  # fmt: skip
    fields.update(changes)
    amount = fields.pop("amount_minor", 2_500)
    moment = datetime(2024, 3, 1, 10, number % 60, tzinfo=UTC)
    return build_score_request(f"tx-{number}", card, "t-1", amount, "EUR", moment, **fields)


async def _failure(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details() or ""


def test_change_list_needs_the_admin_role_and_counts_hits_champion_and_shadow(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    """pos (role score) is denied ChangeList, no token is unauthenticated; ana (admin) blocks
    a card, which then declines. Every answer a rule decided is counted under the champion,
    every one the shadow set would have decided under the challenger, which decides none."""
    registry = copy_registry(trained_model, tmp_path / "registry")
    common: dict[str, Any] = {"feature_names": FEATURE_NAMES, "by": "ana", "reason": "test"}
    publish(registry, "rules", {"format": 1, "rules": [BIG_CNP]}, **common)
    publish(registry, "rules", {"format": 1, "rules": [SHADOW_ALL]}, alias=CHALLENGER, **common)
    block = admin_pb2.ChangeListRequest(list="block", kind="card", value="card-9", reason="stolen")
    before = {
        name: _hits(rule_set, name)
        for rule_set, name in (
            ("champion", "big_cnp"),
            ("challenger", "shadow_everything"),
            ("champion", "block_list.card"),
        )
    }

    async def scenario(
        admin: ModelAdminAsyncStub, scoring: FraudScoringAsyncStub, rules: RuleStore
    ) -> list[scoring_pb2.ScoreResponse]:
        denied = await _failure(admin.ChangeList(block, metadata=_metadata(POS_TOKEN)))
        assert denied[0] is grpc.StatusCode.PERMISSION_DENIED
        assert (await _failure(admin.ChangeList(block)))[0] is grpc.StatusCode.UNAUTHENTICATED
        assert rules.versions["lists"] is None
        bad = admin_pb2.ChangeListRequest(list="block", kind="planet", value="x", reason="r")
        code, details = await _failure(admin.ChangeList(bad, metadata=_metadata(ADMIN_TOKEN)))
        assert (code, "kind must be one of" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)
        changed = await admin.ChangeList(block, metadata=_metadata(ADMIN_TOKEN), timeout=TIMEOUT)
        assert rules.versions["lists"] == changed.lists_version
        swipes = [_swipe(1), _swipe(2, amount_minor=900_000, card_present=False),
                  _swipe(3, card="card-9")]  # fmt: skip
        pos = _metadata(POS_TOKEN)
        return [await scoring.Score(s, metadata=pos, timeout=TIMEOUT) for s in swipes]

    plain, big, blocked = _serve(registry, scenario)
    assert (plain.rule_id, plain.decision_source) == ("", scoring_pb2.DECISION_SOURCE_MODEL)
    assert (big.rule_id, big.decision) == ("big_cnp", scoring_pb2.DECISION_DECLINE)
    assert (blocked.rule_id, blocked.decision) == ("block_list.card", scoring_pb2.DECISION_DECLINE)
    assert _hits("champion", "big_cnp") - before["big_cnp"] == 1
    assert _hits("champion", "block_list.card") - before["block_list.card"] == 1
    # The shadow set holds for all three; the blocked one is decided by the list first.
    assert _hits("challenger", "shadow_everything") - before["shadow_everything"] == 2


def test_a_server_that_cannot_sign_refuses_to_change_signed_lists(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    """With trusted keys, ChangeList is FAILED_PRECONDITION naming the way that signs."""
    registry = copy_registry(trained_model, tmp_path / "registry")
    key, _private, _public = generate_key_pair(tmp_path / "keys", "analysts")
    block = admin_pb2.ChangeListRequest(list="block", kind="card", value="card-9", reason="stolen")

    async def scenario(
        admin: ModelAdminAsyncStub, scoring: FraudScoringAsyncStub, rules: RuleStore
    ) -> tuple[grpc.StatusCode, str]:
        return await _failure(admin.ChangeList(block, metadata=_metadata(ADMIN_TOKEN)))

    code, details = _serve(registry, scenario, signatures=key.policy)
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "fraud-train rules list add|remove" in details
