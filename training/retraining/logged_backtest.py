"""`fraud-train rules backtest --decisions DIR --outcomes DIR`: a rule set judged on the
server's own decision log, read and labelled by retraining's readers
(`training.retraining.feedback`, the Parquet twins included), with no replay: each
transaction on the features and score the server logged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.core.domain import Decision, EntryMode, Transaction
from service.core.rule_compiler import compile_rules
from service.core.scoring import decision_for
from service.features.engine import FEATURE_NAMES
from training.config import TrainSettings
from training.model_build.rule_backtest import Judged, RowDecision, champion_thresholds, judge
from training.retraining.feedback import (
    labels_as_of,
    newest_time_ns,
    read_decision_log,
    read_outcomes,
)


def backtest_logged(
    decisions: Path,
    outcomes: Path,
    rules_document: dict[str, Any],
    settings: TrainSettings,
    registry_root: Path,
) -> tuple[dict[str, Any], list[RowDecision]]:
    """The report of `rules_document` on the server's own decision log, labelled by its
    outcome log as `fraud-train retrain` labels it (a transaction without a report is
    genuine once `features.label_delay_days` old, unknown before; unknown counts as
    genuine here and is reported). Each transaction is judged on what the server saw: its
    logged features and score; the model's decision is the logged score against the
    champion's thresholds (the logged decision when there is no score or no champion)."""
    compile_rules(rules_document, "candidate", FEATURE_NAMES)
    logged = read_decision_log(decisions, feature_count=len(FEATURE_NAMES))
    reported = read_outcomes(outcomes)
    frame = logged.frame
    labels = labels_as_of(
        frame["transaction_id"].to_numpy(dtype=object),
        frame["event_ns"].to_numpy(),
        reported,
        as_of_ns=newest_time_ns(logged, reported),
        label_delay_ns=int(settings.features.label_delay_seconds * 1e9),
    )
    thresholds = champion_thresholds(registry_root)
    # A fallback answer's logged score is 0, not the model's: no score, as the server saw it.
    scores: list[float | None] = [
        None if fallback_reason else score
        for fallback_reason, score in zip(frame["fallback_reason"], frame["score"], strict=True)
    ]
    judged = Judged(
        _logged_transactions(frame),
        (
            vector.tolist() if has else None
            for vector, has in zip(logged.features, logged.has_features, strict=True)
        ),
        scores,
        [
            Decision[logged_decision]
            if score is None or thresholds is None
            else decision_for(score, thresholds)
            for score, logged_decision in zip(scores, frame["decision"], strict=True)
        ],
        np.maximum(labels, 0).tolist(),
        frame["amount"].tolist(),
        {"scored_by": "the logged scores", "unknown_labels": int((labels < 0).sum())},
    )
    return judge(judged, rules_document, registry_root)


def _logged_transactions(frame: pd.DataFrame) -> Iterator[Transaction]:
    columns = [frame[name].tolist() for name in _LOGGED_COLUMNS]
    for tx_id, ns, card, terminal, amount, merchant, mcc, mode, currency, country, present in zip(
        *columns, strict=True
    ):
        yield Transaction(
            tx_id, ns / 1e9, card, terminal, amount, merchant, mcc, EntryMode(mode), currency,
            country, None if present is pd.NA else bool(present),
        )  # fmt: skip


_LOGGED_COLUMNS = ("transaction_id", "event_ns", "card", "terminal_id", "amount", "merchant_id",
                   "mcc", "entry_mode", "currency", "country", "card_present")  # fmt: skip
