"""Why a feature state store cannot be used, whatever the backend."""

from __future__ import annotations


class StateStoreError(RuntimeError):
    """The store cannot be opened: unreachable, unreadable, or not a store."""


class StateMismatch(StateStoreError):
    """The store was built for other feature settings than the model's."""
