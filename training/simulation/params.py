"""What the transaction simulator (`training.simulation.simulate`) simulates: one frozen,
validated model.

The fraud scenarios the counts below refer to are listed in `training.simulation.simulate`.
"""

from __future__ import annotations

from datetime import date
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SimulationParams(BaseModel):
    """What to simulate.

    The defaults give about 1.78 million shop purchases (the handbook profile, 0.8% fraud);
    the extended profile adds about 0.1 million online ones and brings fraud to 1.0%.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    customers: int = Field(default=5_000, gt=0)
    """Number of cards."""
    terminals: int = Field(default=10_000, gt=0)
    """Number of terminals on the plane; online terminals come on top (about 2%)."""
    days: int = Field(default=183, gt=0)
    """Length of the simulated period."""
    start_date: date = date(2018, 4, 1)
    """First day, starting at midnight UTC."""
    seed: int = Field(default=0, ge=0)
    """Seed of every random draw: the same parameters give the same frame."""
    radius: float = Field(default=5.0, gt=0)
    """A customer buys at the terminals within this distance of it."""
    profile: Literal["extended", "handbook"] = "extended"
    """"handbook": the handbook's design only; "extended": plus online purchases, scenarios 4-5."""
    compromised_terminals_per_day: int = Field(default=2, ge=0)
    """Scenario 2: terminals compromised each day, for 28 days."""
    compromised_cards_per_day: int = Field(default=3, ge=0)
    """Scenario 3: cards compromised each day, for 14 days."""
    card_testing_per_day: int = Field(default=2, ge=0)
    """Scenario 4: cards tested then cashed out each day (extended profile)."""
    cnp_sprees_per_day: int = Field(default=2, ge=0)
    """Scenario 5: cards used for an online spree abroad each day (extended profile)."""

    @model_validator(mode="after")
    def _daily_draws_fit(self) -> Self:
        """Each day's compromised entities are distinct, so there must be enough of them."""
        if self.compromised_terminals_per_day > self.terminals:
            raise ValueError("compromised_terminals_per_day exceeds terminals")
        per_day = (self.compromised_cards_per_day, self.card_testing_per_day,
                   self.cnp_sprees_per_day)  # fmt: skip
        if max(per_day) > self.customers:
            raise ValueError("cards compromised per day exceed customers")
        return self
