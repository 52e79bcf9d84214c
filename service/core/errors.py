"""The scoring core's errors. They name what went wrong, never a transport status code:
the gRPC adapter maps each class to a status in one table.

    ScoringError
    ├── InvalidRequest        a field is missing, malformed or out of range
    ├── ConflictingRepeat     a known transaction_id sent again with other content
    ├── UnknownTransaction    an outcome names a transaction unknown or too old to matter
    ├── ModelUnavailable      no model is loaded and no fallback may answer
    └── StateUnavailable      the feature state's store failed (full, unreachable, broken)
"""

from __future__ import annotations


class ScoringError(Exception):
    """Base class of every error the scoring core raises on purpose."""


class InvalidRequest(ScoringError):
    """A request field the caller must fix; `str()` is "field: reason" and safe to return.

    The reason must never quote the field's value: it can be request data such as a card
    number.
    """

    def __init__(self, field: str, reason: str) -> None:
        # Both parts go to Exception so args round-trip through pickle and repr.
        super().__init__(field, reason)
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class ConflictingRepeat(ScoringError):
    """A transaction_id already scored, sent again with other content: never answered from
    the first one's answer. `str()` is "field: reason", naming the first field that differs,
    never a value."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field

    def __str__(self) -> str:
        return (
            f"{self.field}: differs from the transaction already scored under this "
            "transaction_id; a new transaction needs a new transaction_id"
        )


class UnknownTransaction(ScoringError):
    """An outcome for a transaction id the server does not know or has already forgotten."""


class ModelUnavailable(ScoringError):
    """No model is loaded and the fallback policy does not allow answering without one."""


class StateUnavailable(ScoringError):
    """The feature state's store failed: an outcome could not be counted (a transaction
    gets the fallback answer instead). Retrying later may succeed."""
