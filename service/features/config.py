"""Settings that change feature values, recorded in every model manifest."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field

SECONDS_PER_DAY = 86_400.0


class FeatureConfig(BaseModel):
    """Knobs of the feature engine. A model is only served with the config it was trained on."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    label_delay_days: float = Field(default=7.0, gt=0, le=90)
    """Days before a transaction's label counts in the risk windows. A transaction with no
    fraud outcome counts as genuine once this delay has passed (the handbook's 7 days)."""

    small_amount: float = Field(default=2.0, ge=0)
    """Amounts below this (major units) count as card-testing probes."""

    @property
    def fingerprint(self) -> str:
        """12 hex digits naming these settings, written on each logged decision: its features
        were computed with them, and a retrain uses only rows of its own settings."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]

    @property
    def label_delay_seconds(self) -> float:
        return self.label_delay_days * SECONDS_PER_DAY

    @property
    def state_horizon_seconds(self) -> float:
        """How long a record lives without activity: the longest window (30 days, a day
        tile more for alignment) plus the label delay. Past it, no feature and no outcome
        can use the record, so every path reads it as new and stores may drop it."""
        return self.label_delay_seconds + 31 * SECONDS_PER_DAY
