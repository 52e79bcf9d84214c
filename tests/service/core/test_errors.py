"""The domain error tree."""

from __future__ import annotations

import pickle

from service.core.errors import InvalidRequest


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
