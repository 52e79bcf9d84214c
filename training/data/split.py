"""Cutting history into time-ordered periods: warm-up, train, gap, validation, test.

The gap between training and validation is as long as the label delay: at deployment the
last days before training ends have no settled labels yet, so evaluating right after them
would flatter the model (the handbook's protocol).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from training.config import SplitConfig

NANOS_PER_DAY = 86_400 * 1_000_000_000


class SplitError(Exception):
    """The history is too short or too sparse for the configured periods."""


@dataclass(frozen=True)
class Periods:
    """Boolean row masks, one per period, over a time-sorted history."""

    train: NDArray[np.bool_]
    validation: NDArray[np.bool_]
    test: NDArray[np.bool_]
    first_day: int
    train_days: tuple[int, int]
    validation_days: tuple[int, int]
    test_days: tuple[int, int]


def day_index(timestamp_ns: NDArray[np.int64]) -> NDArray[np.int64]:
    """UTC calendar day of each event (days since the epoch)."""
    return timestamp_ns // NANOS_PER_DAY


def split_periods(
    days: NDArray[np.int64], labels: NDArray[np.int8], config: SplitConfig, label_delay_days: float
) -> Periods:
    """Masks for [warm-up | train | gap | validation | test], whole UTC days, oldest first."""
    first_day = int(days.min())
    end_day = int(days.max()) + 1
    gap = math.ceil(label_delay_days)
    test_start = end_day - config.test_days
    validation_start = test_start - config.validation_days
    train_end = validation_start - gap
    train_start = first_day + config.warmup_days
    if train_end - train_start < 1:
        covered = end_day - first_day
        needed = config.warmup_days + 1 + gap + config.validation_days + config.test_days
        raise SplitError(
            f"history covers {covered} days; warm-up, training, label-delay gap, validation "
            f"and test need at least {needed}"
        )
    periods = Periods(
        train=(days >= train_start) & (days < train_end),
        validation=(days >= validation_start) & (days < test_start),
        test=days >= test_start,
        first_day=first_day,
        train_days=(train_start, train_end),
        validation_days=(validation_start, test_start),
        test_days=(test_start, end_day),
    )
    for name in ("train", "validation", "test"):
        mask = getattr(periods, name)
        if not labels[mask].any():
            raise SplitError(f"the {name} period has no fraud: metrics and training need some")
        if labels[mask].all():
            raise SplitError(f"the {name} period has only frauds")
    return periods
