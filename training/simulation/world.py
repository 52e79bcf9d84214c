"""The simulated world and the transactions drawn in it, as the simulator's parts share them.

`training.simulation.simulate` builds the `World` and draws the genuine purchases,
`training.simulation.fraud_patterns` draws or marks the frauds; both hand `Rows` on until
`training.simulation.simulate` makes the frame.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

DAY = 86_400
HOUR = 3_600

# The plane's quadrants are the home countries (index 2 * north + east); the rest exist
# only online, so a purchase there is abroad for every card.
COUNTRIES = ("FR", "CH", "GB", "DE", "IE", "NL", "US", "CN")
CURRENCIES = ("EUR", "CHF", "GBP", "EUR", "EUR", "EUR", "USD", "CNY")
HOME_COUNTRIES = 4


@dataclass(frozen=True)
class World:
    """Customers and terminals; online terminals are numbered after the plane's."""

    mean_amount: Floats
    tx_per_day: Floats
    home: Ints
    neighbour_start: Ints
    neighbours: Ints
    terminal_country: Ints
    terminal_merchant: Ints
    merchant_mcc: Ints
    plane_terminals: int

    def online_terminals(self, countries: Ints) -> Ints:
        """The online terminals located in any of `countries`."""
        online = np.arange(self.plane_terminals, len(self.terminal_country))
        return online[np.isin(self.terminal_country[online], countries)]


@dataclass(frozen=True)
class Rows:
    """Transactions under construction, one array per field, in generation order."""

    customer: Ints
    terminal: Ints
    seconds: Ints
    amount: Floats
    entry_mode: Ints
    scenario: Ints

    @classmethod
    def concat(cls, parts: list[Rows]) -> Rows:
        """`parts` end to end; no parts gives no rows."""
        none = np.empty(0, dtype=np.int64)
        parts = [cls(none, none, none, none.astype(np.float64), none, none), *parts]
        names = [field.name for field in fields(cls)]
        return cls(*(np.concatenate([getattr(part, name) for part in parts]) for name in names))
