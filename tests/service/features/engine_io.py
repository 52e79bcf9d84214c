"""What goes into the feature engine and what comes out, for the feature tests: transactions
on a fixed event-time line, and vectors read back by feature name."""

from __future__ import annotations

from service.core.domain import Transaction
from service.features import FEATURES

NAMES = [feature.name for feature in FEATURES]
HOUR = 3600.0
DAY = 86400.0
T0 = 1_522_540_800.0  # 2018-04-01T00:00:00Z, a Sunday
DELAY = 7 * DAY


def tx(i: int, t: float, card: str = "c1", terminal: str = "t1", amount: float = 10.0, **kw):
    return Transaction(f"tx{i}", t, card, terminal, amount, **kw)


def as_dict(vector: list[float]) -> dict[str, float]:
    assert len(vector) == len(NAMES)
    return dict(zip(NAMES, vector, strict=True))
