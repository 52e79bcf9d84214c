"""Which report decides a transaction's label when reports disagree: the one rule that the
feature state (`service.features.risk_features`) and retraining's labels
(`training.retraining.feedback`) both follow.

Each caller has a rank (`auth.callers[].rank`, 0 unless configured): how far its word on a
transaction's outcome is trusted, for instance the issuer's chargeback feed above a
case-management tool above a merchant portal. Every report is kept, with its caller and
the rank that caller had when the report arrived (the outcome log's `caller_rank`), and
the label is that of the report of the highest rank; among reports of that rank, the
latest. So:

- with every rank equal (the default, and development mode) the latest report decides,
  as it did before ranks existed;
- a reversal by a lower-ranked caller is kept beside the report it contradicts and changes
  nothing: a chargeback stays fraud when a merchant's portal says "genuine" afterwards;
- a reversal by a caller of equal or higher rank decides: the chargeback feed withdraws
  its own chargeback.

"Latest" is by arrival for the feature state, which applies each report as it comes, and by
report time (`reported_at`, then log order) for retraining, which labels as of a moment and
sees only the reports made by then: both fold `prevails` over the reports in their order.
Ranks are non-negative, so any report prevails over a transaction nobody reported on yet
(which the state holds as genuine at rank 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

DEFAULT_RANK: Final = 0
"""The rank of a caller configured without one, of an unidentified caller (open mode) and
of a report logged before ranks existed."""


def prevails(rank: int, held_rank: int) -> bool:
    """Whether a report by a caller of `rank` replaces the label of an earlier report, by a
    caller of `held_rank`: the same rank or a higher one does, a lower one does not."""
    return rank >= held_rank


def deciding_report(ranks: Iterable[int]) -> int:
    """Of one transaction's reports, in order (earliest first) and given by their callers'
    ranks, the position of the one whose label stands. ValueError when there is none."""
    deciding = -1
    held_rank = DEFAULT_RANK
    for position, rank in enumerate(ranks):
        if deciding < 0 or prevails(rank, held_rank):
            deciding, held_rank = position, rank
    if deciding < 0:
        raise ValueError("no report to decide between")
    return deciding
