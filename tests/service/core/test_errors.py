"""The domain error tree."""

from __future__ import annotations

import pickle

import pytest

from service.core.errors import InvalidRequest, ModelUnavailable, ScoringError, UnknownTransaction


def test_invalid_request_names_the_field_and_the_reason():
    """str() is "field: reason", and both parts stay readable as attributes."""
    error = InvalidRequest("transaction.currency", "unknown ISO 4217 code")

    assert str(error) == "transaction.currency: unknown ISO 4217 code"
    assert (error.field, error.reason) == ("transaction.currency", "unknown ISO 4217 code")


def test_invalid_request_survives_pickling():
    """An InvalidRequest crosses a process boundary with its field and reason intact."""
    error = pickle.loads(pickle.dumps(InvalidRequest("transaction.mcc", "above 9999")))

    assert (error.field, error.reason, str(error)) == (
        "transaction.mcc",
        "above 9999",
        "transaction.mcc: above 9999",
    )


@pytest.mark.parametrize("error_type", [InvalidRequest, UnknownTransaction, ModelUnavailable])
def test_every_domain_error_is_a_scoring_error(error_type):
    """One `except ScoringError` catches every error the core raises on purpose."""
    assert issubclass(error_type, ScoringError)
