"""Tests for service.core.label_conflicts: the rule for conflicting outcome reports that the
feature state and retraining both follow."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.label_conflicts import DEFAULT_RANK, deciding_report, prevails


def test_a_report_prevails_over_an_equal_or_lower_rank_only() -> None:
    """Equal ranks: the later report decides; a higher rank decides; a lower one does not."""
    assert prevails(DEFAULT_RANK, DEFAULT_RANK)
    assert prevails(3, 1)
    assert not prevails(1, 3)


@pytest.mark.parametrize(
    ("ranks", "deciding"),
    [
        ([0], 0),
        ([0, 0, 0], 2),  # no ranks: the latest, as before ranks
        ([2, 0], 0),  # a chargeback feed's fraud, a portal's reversal after it
        ([0, 2], 1),  # the feed after the portal
        ([2, 0, 2, 1], 2),  # the feed reversing itself
    ],
)
def test_the_deciding_report_is_the_highest_ranked_then_the_latest(
    ranks: list[int], deciding: int
) -> None:
    """Of reports in order, the last of those of the highest rank decides."""
    assert deciding_report(ranks) == deciding


@given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=30))
def test_folding_prevails_picks_the_last_of_the_highest_rank(ranks: list[int]) -> None:
    """Whatever the order of reports, the fold of `prevails` is the last report among those
    of the highest rank: the rule, stated without the fold."""
    highest = max(ranks)
    assert deciding_report(ranks) == max(i for i, rank in enumerate(ranks) if rank == highest)


def test_no_report_decides_nothing() -> None:
    """An empty list of reports is a caller's mistake, not a label."""
    with pytest.raises(ValueError, match="no report"):
        deciding_report([])
