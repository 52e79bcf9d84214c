"""The generated modules match proto/, and the wire contract only ever evolves compatibly."""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from service._proto.fraud.v1 import scoring_pb2

REPO = Path(__file__).resolve().parents[2]
GENERATED = Path("service/_proto")

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
FIELDS: dict[str, dict[str, tuple[int, int]]] = {
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
    "Reason": {"code": (1, STRING), "feature": (2, STRING), "contribution": (3, DOUBLE)},
    "ScoreResponse": {
        "transaction_id": (1, STRING),
        "score": (2, DOUBLE),
        "decision": (3, ENUM),
        "reasons": (4, MESSAGE),
        "model_version": (5, STRING),
        "decision_source": (6, ENUM),
        "fallback_reason": (7, STRING),
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
    },
}

# rpc name -> (request, response, client streaming, server streaming)
METHODS = {
    "Score": ("ScoreRequest", "ScoreResponse", False, False),
    "ScoreStream": ("ScoreRequest", "ScoreResponse", True, True),
    "ReportOutcome": ("OutcomeRequest", "OutcomeResponse", False, False),
    "GetModelInfo": ("GetModelInfoRequest", "ModelInfo", False, False),
}


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
    """scripts/generate-proto reproduces service/_proto byte for byte."""
    subprocess.run([REPO / "scripts" / "generate-proto", tmp_path], check=True, cwd=REPO)

    generated = _files(tmp_path / GENERATED)
    tools = f"grpcio-tools {version('grpcio-tools')}, mypy-protobuf {version('mypy-protobuf')}"
    assert Path("fraud/v1/scoring_pb2_grpc.pyi") in generated
    assert generated == _files(REPO / GENERATED), (
        f"service/_proto is stale or was edited by hand: run scripts/generate-proto ({tools})"
    )


def test_messages_round_trip_through_the_wire():
    """Every field of a request and a response survives serialization."""
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

    for message in (request, response):
        parsed = type(message).FromString(message.SerializeToString())
        assert parsed == message
    assert scoring_pb2.ScoreRequest.FromString(request.SerializeToString()).transaction.HasField(
        "card_present"
    )


def test_field_numbers_and_types_are_pinned():
    """No message field of the published contract was renumbered, retyped or removed."""
    actual = {name: _fields(scoring_pb2.DESCRIPTOR.message_types_by_name[name]) for name in FIELDS}

    assert actual == FIELDS
    assert set(scoring_pb2.DESCRIPTOR.message_types_by_name) == set(FIELDS)


def test_enum_numbers_are_pinned():
    """No enum value of the published contract was renumbered or removed."""
    actual = {name: _values(scoring_pb2.DESCRIPTOR.enum_types_by_name[name]) for name in ENUMS}

    assert actual == ENUMS


def test_service_methods_are_pinned():
    """The service keeps its rpc names, message types and streaming shapes."""
    service = scoring_pb2.DESCRIPTOR.services_by_name["FraudScoring"]
    actual = {
        method.name: (
            method.input_type.name,
            method.output_type.name,
            method.client_streaming,
            method.server_streaming,
        )
        for method in service.methods
    }

    assert service.full_name == "fraud.v1.FraudScoring"
    assert actual == METHODS
