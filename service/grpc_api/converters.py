"""Conversions between the wire messages and the scoring core's plain values.

One function per direction and message, no logic beyond moving fields: requests stay
unvalidated (`service.core.validation` judges them) and enum numbers pass through unchanged,
unknown ones included. All but `to_model_info` and the admin listing run on every call, so
they build no temporary lists or dicts.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from service.core.domain import (
    NANOS_PER_SECOND,
    ModelSummary,
    RawOutcome,
    RawTransaction,
    Reason,
    ScoreResult,
)
from service.grpc_api._proto.fraud.v1 import admin_pb2, scoring_pb2
from service.model.overview import ModelsOverview


def to_raw_transaction(request: scoring_pb2.ScoreRequest) -> RawTransaction:
    """The request's transaction as received; unset optional fields become None."""
    tx = request.transaction
    return RawTransaction(
        transaction_id=tx.transaction_id,
        card_id=tx.card_id,
        terminal_id=tx.terminal_id,
        merchant_id=tx.merchant_id,
        amount_minor=tx.amount_minor,
        currency=tx.currency,
        timestamp_ns=_nanoseconds(tx.timestamp),
        mcc=tx.mcc,
        entry_mode=tx.entry_mode,
        card_present=tx.card_present if tx.HasField("card_present") else None,
        country=tx.country,
    )


def to_raw_outcome(request: scoring_pb2.OutcomeRequest) -> RawOutcome:
    """The outcome as received; a missing `reported_at` becomes None."""
    return RawOutcome(
        transaction_id=request.transaction_id,
        is_fraud=request.is_fraud,
        reported_at_ns=_nanoseconds(request.reported_at),
    )


def to_score_response(result: ScoreResult) -> scoring_pb2.ScoreResponse:
    """The wire response for one scored transaction."""
    # Assigning fields one by one is cheaper than upb's keyword constructor.
    response = scoring_pb2.ScoreResponse()
    response.transaction_id = result.transaction_id
    response.score = result.score
    response.decision = scoring_pb2.Decision.ValueType(result.decision)
    response.model_version = result.model_version
    response.decision_source = scoring_pb2.DecisionSource.ValueType(result.source)
    if result.fallback_reason is not None:
        response.fallback_reason = result.fallback_reason.value
    if result.rule_id:
        response.rule_id = result.rule_id
        response.rules_version = result.rules_version
    if result.reasons:  # the approve path has none: skip building the container
        _add_reasons(response, result.reasons)
    return response


def to_model_info(summary: ModelSummary) -> scoring_pb2.ModelInfo:
    """The wire description of the deciding model."""
    return scoring_pb2.ModelInfo(
        version=summary.version,
        created_at=_timestamp(summary.created_at),
        feature_engine_version=summary.feature_engine_version,
        features=[
            scoring_pb2.Feature(name=name, description=description)
            for name, description in summary.features
        ],
        review_threshold=summary.review_threshold,
        decline_threshold=summary.decline_threshold,
        threshold_policy=summary.threshold_policy,
        test_metrics=summary.test_metrics,
        training_libraries=summary.training_libraries,
    )


def _nanoseconds(timestamp: timestamp_pb2.Timestamp) -> int | None:
    """Exact integer nanoseconds since the epoch; None for an unset or empty Timestamp.

    An unset field reads as the empty Timestamp, so the epoch itself also counts as "not
    sent": no card transaction or outcome happened at 1970-01-01T00:00:00Z.
    """
    return (timestamp.seconds * NANOS_PER_SECOND + timestamp.nanos) or None


def _add_reasons(response: scoring_pb2.ScoreResponse, reasons: tuple[Reason, ...]) -> None:
    wire_reasons = response.reasons
    for reason in reasons:
        wire = wire_reasons.add()
        wire.code = reason.code
        wire.feature = reason.feature
        wire.contribution = reason.contribution


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp for `moment`; a naive datetime is taken as UTC (protobuf's rule)."""
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(moment)
    return timestamp


def to_list_models_response(overview: ModelsOverview) -> admin_pb2.ListModelsResponse:
    """The wire form of `overview`."""
    response = admin_pb2.ListModelsResponse(
        serving_version=overview.serving_version or "",
        challenger_version=overview.challenger_version or "",
    )
    for published in overview.versions:
        version = response.versions.add(
            version=published.version,
            aliases=published.aliases,
            test_metrics=published.test_metrics,
            parent_version=published.parent_version or "",
        )
        if published.created_at is not None:
            version.created_at.FromDatetime(published.created_at)
    for refusal in overview.refusals:
        response.refusals.add(
            alias=refusal.alias,
            version=refusal.version or "",
            reason=refusal.reason,
            detail=refusal.detail,
        )
    return response
