"""The servicer's one error table: each domain error has its status, anything else INTERNAL."""

from __future__ import annotations

import grpc
import pytest

from service.core.errors import (
    ConflictingRepeat,
    InvalidRequest,
    ModelUnavailable,
    ScoringError,
    UnknownTransaction,
)
from service.grpc_api.servicer import status_for


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequest("transaction.mcc", "above 9999"), grpc.StatusCode.INVALID_ARGUMENT),
        (ConflictingRepeat("transaction.amount_minor"), grpc.StatusCode.ALREADY_EXISTS),
        (UnknownTransaction("unknown"), grpc.StatusCode.NOT_FOUND),
        (ModelUnavailable("no model"), grpc.StatusCode.UNAVAILABLE),
        # A ScoringError the table does not name is a bug, not a caller's mistake.
        (ScoringError("unmapped"), grpc.StatusCode.INTERNAL),
        (ValueError("anything else"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_domain_error_has_its_status_and_anything_else_is_internal(
    error: Exception, code: grpc.StatusCode
) -> None:
    """The status a failed call ends with is chosen by the error's class alone."""
    assert status_for(error) is code
