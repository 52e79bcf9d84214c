"""`fraud-train rules backtest`: what a rule set would have done to a labelled history.

The history is replayed through the server's feature code (`training.data.replay`, the
transactions as `service.core.domain.Transaction` values and their feature vectors), scored
by the registry's champion model when there is one, and judged by the server's own
compiled rules and lists (`service.core.rules.RuleBook.decide`), in the server's order: so
a rule that declines a transaction here declines it live. Differences to know: the BIN is
unknown (histories hold tokens, so BIN lists and rules never hit), and features are the
float32 values the model reads (a rule comparing a feature at exactly its threshold may
differ in the last bit).

Or the server's own decision log (`training.retraining.logged_backtest`, `--decisions DIR
--outcomes DIR`), judged by `judge` here the same way.

Reported per rule: `decided` (transactions it would decide: it holds, and nothing before it
in precedence does), `matched` (it holds, whatever decides), the precision and recall of
the decided ones against the labels, and the amount it would decline; for the whole set,
the same and the decline rate; against the set deciding now (the registry's rules
champion and its lists), the transactions whose answer would change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.core.domain import Decision, Transaction
from service.core.rule_compiler import compile_rules
from service.core.rules import Lists, RuleBook, RuleSet
from service.core.scoring import decision_for
from service.features.engine import FEATURE_NAMES
from service.model.artifact import ONNX_MODEL_FILE
from service.model.onnx_scorer import OnnxScorer
from service.model.registry import CHAMPION, Registry, RegistryError
from service.model.rule_registry import RuleArtifactError, RuleRegistry, load_lists, load_rule_set
from training.config import TrainSettings
from training.data.dataset import load_history
from training.data.replay import replay_features, transactions


@dataclass(frozen=True)
class RowDecision:
    """One transaction's answer under a rule set: the rule or list that decided ("" for
    the model) and the decision."""

    transaction_id: str
    rule_id: str
    decision: Decision


@dataclass(frozen=True)
class Judged:
    """What a rule set is judged on, row-aligned: each transaction, its features (None: not
    computed), the model's score (None: none), the model's decision, its label (1 fraud)
    and amount. Transactions and features are iterated once, made row by row: a history's
    millions of rows are not held twice."""

    transactions: Iterable[Transaction]
    features: Iterable[list[float] | None]
    scores: list[float | None]
    model_decisions: list[Decision]
    labels: list[int]
    amounts: list[float]
    about: dict[str, Any]


def backtest_rules(
    data: Path,
    rules_document: dict[str, Any],
    settings: TrainSettings,
    registry_root: Path,
) -> tuple[dict[str, Any], list[RowDecision]]:
    """The report of `rules_document` on the history `data`, and each row's answer."""
    compile_rules(rules_document, "candidate", FEATURE_NAMES)
    frame = load_history(data).frame
    matrix = replay_features(frame, settings.features)
    model = _champion_scores(registry_root, matrix)
    scores: list[float | None] = [None] * len(frame)
    decisions = [Decision.APPROVE] * len(frame)
    if model is not None:
        scores = model[0].astype(float).tolist()
        decisions = [decision_for(score, model[1]) for score in model[0]]
    judged = Judged(
        transactions(frame),
        (row.tolist() for row in matrix),
        scores,
        decisions,
        frame["is_fraud"].to_numpy(dtype=np.int8).tolist(),
        frame["amount"].tolist(),
        {"scored_by": None if model is None else model[2]},
    )
    return judge(judged, rules_document, registry_root)


def judge(
    judged: Judged, rules_document: dict[str, Any], registry_root: Path
) -> tuple[dict[str, Any], list[RowDecision]]:
    """The report of `rules_document` on `judged`, against the set deciding now."""
    candidate = compile_rules(rules_document, "candidate", FEATURE_NAMES)
    lists, current = _deciding_now(registry_root)
    labels, amounts = judged.labels, judged.amounts
    candidate_book = RuleBook(candidate, lists)
    current_book = RuleBook(current, lists)
    rows: list[RowDecision] = []
    now_rows: list[RowDecision] = []
    matched: Counter[str] = Counter()
    for tx, features, score, model_decision in zip(
        judged.transactions, judged.features, judged.scores, judged.model_decisions, strict=True
    ):
        for rule in candidate.hits(tx, features, score, "", lists):
            matched[rule.rule_id] += 1
        rows.append(_answer(candidate_book, tx, features, score, model_decision))
        now_rows.append(_answer(current_book, tx, features, score, model_decision))
    report = {
        "history": {
            "transactions": len(rows),
            "frauds": int(sum(labels)),
            "amount": round(float(sum(amounts)), 2),
            **judged.about,
        },
        "rules": [
            _rule_report(rule.rule_id, rule.action, rows, labels, amounts, matched[rule.rule_id])
            for rule in candidate.rules
        ],
        "lists": _list_reports(rows, labels, amounts),
        "whole_set": _set_report(rows, labels, amounts),
        "current_set": {
            "rules_version": current.version or None,
            "lists_version": lists.version or None,
            **_set_report(now_rows, labels, amounts),
        },
        "changed_answers": sum(
            1 for new, old in zip(rows, now_rows, strict=True) if new.decision != old.decision
        ),
    }
    return report, rows


def _answer(
    book: RuleBook,
    tx: Transaction,
    features: list[float] | None,
    score: float | None,
    model_decision: Decision,
) -> RowDecision:
    verdict = book.decide(tx, features, score, "")
    if verdict is not None:
        return RowDecision(tx.transaction_id, verdict.rule_id, verdict.decision)
    return RowDecision(tx.transaction_id, "", model_decision)


def champion_thresholds(registry_root: Path) -> Any:
    """The champion's decision thresholds; None without a champion."""
    registry = Registry(registry_root)
    champion = registry.champion() if registry.versions_dir.is_dir() else None
    return None if champion is None else champion[1].thresholds


def _champion_scores(
    registry_root: Path, matrix: np.ndarray[Any, Any]
) -> tuple[np.ndarray[Any, Any], Any, str] | None:
    """The champion's scores of every row, its thresholds and version; None without one."""
    registry = Registry(registry_root)
    champion = registry.champion() if registry.versions_dir.is_dir() else None
    if champion is None:
        return None
    version, manifest = champion
    scorer = OnnxScorer(registry.artifact_dir(version) / ONNX_MODEL_FILE, len(FEATURE_NAMES))
    return scorer.score_batch(matrix), manifest.thresholds, version


def _deciding_now(registry_root: Path) -> tuple[Lists, RuleSet]:
    """The lists and the rule set the registry's champions name (empty when none)."""
    lists_registry = RuleRegistry(registry_root, "lists")
    rules_registry = RuleRegistry(registry_root, "rules")
    lists_version = lists_registry.alias(CHAMPION)
    rules_version = rules_registry.alias(CHAMPION)
    try:
        lists = (
            Lists.empty() if lists_version is None else load_lists(lists_registry, lists_version)
        )
        rules = (
            RuleSet.empty()
            if rules_version is None
            else load_rule_set(rules_registry, rules_version, FEATURE_NAMES)
        )
    except RuleArtifactError as error:
        raise RegistryError(
            f"the rules or lists champion does not load ({error}): servers keep the version "
            "before it; roll it back (fraud-train rules rollback [--lists])"
        ) from error
    return lists, rules


def _rule_report(
    rule_id: str,
    action: str,
    rows: list[RowDecision],
    labels: list[int],
    amounts: list[float],
    matched: int,
) -> dict[str, Any]:
    decided = [i for i, row in enumerate(rows) if row.rule_id == rule_id]
    figures = _figures(decided, rows, labels, amounts)
    return {"rule": rule_id, "action": action, "matched": matched, **figures}


def _list_reports(
    rows: list[RowDecision], labels: list[int], amounts: list[float]
) -> list[dict[str, Any]]:
    listed = sorted({row.rule_id for row in rows if "_list." in row.rule_id})
    return [
        {
            "list": name,
            **_figures([i for i, r in enumerate(rows) if r.rule_id == name], rows, labels, amounts),
        }
        for name in listed
    ]


def _set_report(rows: list[RowDecision], labels: list[int], amounts: list[float]) -> dict[str, Any]:
    decided = [i for i, row in enumerate(rows) if row.rule_id]
    declined = sum(1 for row in rows if row.rule_id and row.decision is Decision.DECLINE)
    all_declined = [i for i, row in enumerate(rows) if row.decision is Decision.DECLINE]
    frauds = sum(labels)
    return {
        **_figures(decided, rows, labels, amounts),
        "rule_decline_rate": round(declined / len(rows), 6) if rows else 0.0,
        "final_decline_rate": round(len(all_declined) / len(rows), 6) if rows else 0.0,
        "final_decline_recall": round(sum(labels[i] for i in all_declined) / frauds, 4)
        if frauds
        else None,
    }


def _figures(
    decided: list[int], rows: list[RowDecision], labels: list[int], amounts: list[float]
) -> dict[str, Any]:
    frauds_hit = sum(labels[i] for i in decided)
    frauds = sum(labels)
    return {
        "decided": len(decided),
        "frauds": frauds_hit,
        "precision": round(frauds_hit / len(decided), 4) if decided else None,
        "recall": round(frauds_hit / frauds, 4) if frauds else None,
        "declined_amount": round(
            sum(amounts[i] for i in decided if rows[i].decision is Decision.DECLINE), 2
        ),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table for a terminal or docs/rules.md."""
    history = report["history"]
    lines = [
        f"history: {history['transactions']} transactions, {history['frauds']} frauds, "
        f"scored by {history['scored_by'] or 'no model (score rules skipped)'}",
        "",
        f"{'rule':28} {'action':8} {'matched':>8} {'decided':>8} {'frauds':>7} "
        f"{'precision':>9} {'recall':>7} {'declined amount':>16}",
    ]
    listed = [
        {"rule": r["list"], "action": "list", "matched": r["decided"], **r} for r in report["lists"]
    ]
    for row in [*report["rules"], *listed]:
        lines.append(
            f"{row['rule']:28} {row['action']:8} {row['matched']:>8} {row['decided']:>8} "
            f"{row['frauds']:>7} {_ratio(row['precision']):>9} {_ratio(row['recall']):>7} "
            f"{row['declined_amount']:>16,.2f}"
        )
    sets = (("whole set", report["whole_set"]), ("current set", report["current_set"]))
    for label, figures in sets:
        lines.append(
            f"{label:28} {'':8} {'':>8} {figures['decided']:>8} {figures['frauds']:>7} "
            f"{_ratio(figures['precision']):>9} {_ratio(figures['recall']):>7} "
            f"{figures['declined_amount']:>16,.2f}"
        )
    whole, current = report["whole_set"], report["current_set"]
    lines += [
        "",
        f"rule decline rate {whole['rule_decline_rate']:.4%} (current set "
        f"{current['rule_decline_rate']:.4%}); final decline rate with the model "
        f"{whole['final_decline_rate']:.4%} (current {current['final_decline_rate']:.4%}); "
        f"answers changed against the current set: {report['changed_answers']}",
    ]
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
