"""The generated modules match proto/, and the wire contract only ever evolves compatibly."""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from service.grpc_api._proto.fraud.v1 import admin_pb2, scoring_pb2

REPO = Path(__file__).resolve().parents[3]
GENERATED = Path("service/grpc_api/_proto")

STRING = FieldDescriptor.TYPE_STRING
BOOL = FieldDescriptor.TYPE_BOOL
DOUBLE = FieldDescriptor.TYPE_DOUBLE
INT32 = FieldDescriptor.TYPE_INT32
INT64 = FieldDescriptor.TYPE_INT64
UINT32 = FieldDescriptor.TYPE_UINT32
ENUM = FieldDescriptor.TYPE_ENUM
MESSAGE = FieldDescriptor.TYPE_MESSAGE

# The published contract: (field number, wire type) of every field. Add rows for new fields;
# never change or delete a row (retire a field with `reserved` in the .proto instead).
SCORING_FIELDS: dict[str, dict[str, tuple[int, int]]] = {
    "Transaction": {
        "transaction_id": (1, STRING),
        "card_id": (2, STRING),
        "terminal_id": (3, STRING),
        "merchant_id": (4, STRING),
        "amount_minor": (5, INT64),
        "currency": (6, STRING),
        "timestamp": (7, MESSAGE),
        "mcc": (8, UINT32),
        "entry_mode": (9, ENUM),
        "card_present": (10, BOOL),
        "country": (11, STRING),
    },
    "ScoreRequest": {"transaction": (1, MESSAGE)},
    "ScoreBatchRequest": {"transactions": (1, MESSAGE)},
    "ScoreBatchResponse": {"results": (1, MESSAGE)},
    "Reason": {"code": (1, STRING), "feature": (2, STRING), "contribution": (3, DOUBLE)},
    "ScoreResponse": {
        "transaction_id": (1, STRING),
        "score": (2, DOUBLE),
        "decision": (3, ENUM),
        "reasons": (4, MESSAGE),
        "model_version": (5, STRING),
        "decision_source": (6, ENUM),
        "fallback_reason": (7, STRING),
        "rule_id": (8, STRING),
        "rules_version": (9, STRING),
    },
    "OutcomeRequest": {
        "transaction_id": (1, STRING),
        "is_fraud": (2, BOOL),
        "reported_at": (3, MESSAGE),
    },
    "OutcomeResponse": {},
    "GetModelInfoRequest": {},
    "Feature": {"name": (1, STRING), "description": (2, STRING)},
    "ModelInfo": {
        "version": (1, STRING),
        "created_at": (2, MESSAGE),
        "feature_engine_version": (3, INT32),
        "features": (4, MESSAGE),
        "review_threshold": (5, DOUBLE),
        "decline_threshold": (6, DOUBLE),
        "threshold_policy": (7, STRING),
        "test_metrics": (8, MESSAGE),
        "training_libraries": (9, MESSAGE),
    },
}

ADMIN_FIELDS: dict[str, dict[str, tuple[int, int]]] = {
    "ListModelsRequest": {},
    "ReloadRequest": {},
    "ChangeListRequest": {
        "list": (1, STRING),
        "kind": (2, STRING),
        "value": (3, STRING),
        "remove": (4, BOOL),
        "reason": (5, STRING),
        "expires_at": (6, MESSAGE),
    },
    "ChangeListResponse": {"lists_version": (1, STRING)},
    "PublishedVersion": {
        "version": (1, STRING),
        "created_at": (2, MESSAGE),
        "aliases": (3, STRING),
        "test_metrics": (4, MESSAGE),
        "parent_version": (5, STRING),
    },
    "Refusal": {
        "alias": (1, STRING),
        "version": (2, STRING),
        "reason": (3, STRING),
        "detail": (4, STRING),
    },
    "ListModelsResponse": {
        "serving_version": (1, STRING),
        "challenger_version": (2, STRING),
        "versions": (3, MESSAGE),
        "refusals": (4, MESSAGE),
    },
}

ENUMS: dict[str, dict[str, int]] = {
    "EntryMode": {
        "ENTRY_MODE_UNSPECIFIED": 0,
        "ENTRY_MODE_CHIP": 1,
        "ENTRY_MODE_CONTACTLESS": 2,
        "ENTRY_MODE_MAGSTRIPE": 3,
        "ENTRY_MODE_MANUAL": 4,
        "ENTRY_MODE_ECOMMERCE": 5,
    },
    "Decision": {
        "DECISION_UNSPECIFIED": 0,
        "DECISION_APPROVE": 1,
        "DECISION_REVIEW": 2,
        "DECISION_DECLINE": 3,
    },
    "DecisionSource": {
        "DECISION_SOURCE_UNSPECIFIED": 0,
        "DECISION_SOURCE_MODEL": 1,
        "DECISION_SOURCE_FALLBACK": 2,
        "DECISION_SOURCE_RULE": 3,
    },
}

# rpc name -> (request, response, client streaming, server streaming)
SCORING_METHODS = {
    "Score": ("ScoreRequest", "ScoreResponse", False, False),
    "ScoreStream": ("ScoreRequest", "ScoreResponse", True, True),
    "ScoreBatch": ("ScoreBatchRequest", "ScoreBatchResponse", False, False),
    "ReportOutcome": ("OutcomeRequest", "OutcomeResponse", False, False),
    "GetModelInfo": ("GetModelInfoRequest", "ModelInfo", False, False),
}
ADMIN_METHODS = {
    "ListModels": ("ListModelsRequest", "ListModelsResponse", False, False),
    "Reload": ("ReloadRequest", "ListModelsResponse", False, False),
    "ChangeList": ("ChangeListRequest", "ChangeListResponse", False, False),
}
# Each .proto file's descriptor, with its pinned messages, then with its pinned service.
CONTRACTS = [
    pytest.param(scoring_pb2.DESCRIPTOR, SCORING_FIELDS, id="scoring"),
    pytest.param(admin_pb2.DESCRIPTOR, ADMIN_FIELDS, id="admin"),
]
SERVICES = [
    pytest.param(scoring_pb2.DESCRIPTOR, "fraud.v1.FraudScoring", SCORING_METHODS, id="scoring"),
    pytest.param(admin_pb2.DESCRIPTOR, "fraud.v1.ModelAdmin", ADMIN_METHODS, id="admin"),
]


def _files(root: Path) -> dict[Path, bytes]:
    return {
        path.relative_to(root): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def _fields(message: Descriptor) -> dict[str, tuple[int, int]]:
    return {field.name: (field.number, field.type) for field in message.fields}


def _values(enum: EnumDescriptor) -> dict[str, int]:
    return {value.name: value.number for value in enum.values}


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    """scripts/generate-proto reproduces service/grpc_api/_proto byte for byte."""
    subprocess.run([REPO / "scripts" / "generate-proto", tmp_path], check=True, cwd=REPO)

    generated = _files(tmp_path / GENERATED)
    tools = f"grpcio-tools {version('grpcio-tools')}, mypy-protobuf {version('mypy-protobuf')}"
    assert Path("fraud/v1/scoring_pb2_grpc.pyi") in generated
    assert Path("fraud/v1/admin_pb2_grpc.pyi") in generated
    assert generated == _files(REPO / GENERATED), (
        "service/grpc_api/_proto is stale or was edited by hand: "
        f"run scripts/generate-proto ({tools})"
    )


def test_messages_round_trip_through_the_wire():
    """Every field of a request, a response and the admin listing survives serialization."""
    request = scoring_pb2.ScoreRequest(
        transaction=scoring_pb2.Transaction(
            transaction_id="tx-1",
            card_id="tok_1",
            terminal_id="term-1",
            merchant_id="merchant-1",
            amount_minor=2**62,
            currency="EUR",
            timestamp=Timestamp(seconds=1_700_000_000, nanos=999_999_999),
            mcc=9999,
            entry_mode=scoring_pb2.ENTRY_MODE_ECOMMERCE,
            card_present=False,
            country="FR",
        )
    )
    response = scoring_pb2.ScoreResponse(
        transaction_id="tx-1",
        score=0.75,
        decision=scoring_pb2.DECISION_REVIEW,
        reasons=[scoring_pb2.Reason(code="CARD_VELOCITY", feature="f", contribution=1.5)],
        model_version="v1",
        decision_source=scoring_pb2.DECISION_SOURCE_MODEL,
    )

    models = admin_pb2.ListModelsResponse(
        serving_version="v2",
        challenger_version="v3",
        versions=[
            admin_pb2.PublishedVersion(
                version="v2",
                created_at=Timestamp(seconds=1_700_000_000),
                aliases=["champion"],
                test_metrics={"auc_roc": 0.93},
                parent_version="v1",
            )
        ],
        refusals=[
            admin_pb2.Refusal(
                alias="challenger", version="v4", reason="golden_mismatch", detail="d"
            )
        ],
    )

    for message in (request, response, models):
        parsed = type(message).FromString(message.SerializeToString())
        assert parsed == message
    assert scoring_pb2.ScoreRequest.FromString(request.SerializeToString()).transaction.HasField(
        "card_present"
    )


@pytest.mark.parametrize(("file", "fields"), CONTRACTS)
def test_field_numbers_and_types_are_pinned(
    file: FileDescriptor, fields: dict[str, dict[str, tuple[int, int]]]
) -> None:
    """No message field of the published contract was renumbered, retyped or removed."""
    actual = {name: _fields(file.message_types_by_name[name]) for name in fields}

    assert actual == fields
    assert set(file.message_types_by_name) == set(fields)


def test_enum_numbers_are_pinned():
    """No enum value of the published contract was renumbered or removed."""
    actual = {name: _values(scoring_pb2.DESCRIPTOR.enum_types_by_name[name]) for name in ENUMS}

    assert actual == ENUMS


@pytest.mark.parametrize(("file", "full_name", "methods"), SERVICES)
def test_service_methods_are_pinned(
    file: FileDescriptor, full_name: str, methods: dict[str, tuple[str, str, bool, bool]]
) -> None:
    """Each service keeps its rpc names, message types and streaming shapes."""
    (service,) = file.services_by_name.values()
    actual = {
        method.name: (
            method.input_type.name,
            method.output_type.name,
            method.client_streaming,
            method.server_streaming,
        )
        for method in service.methods
    }

    assert service.full_name == full_name
    assert actual == methods
