"""A retrain's comparison of candidate and champion on one evaluation window, and its report.

Both models are scored by their ONNX graphs through the server's scorer, on the same logged
feature rows, so the figures are what serving would see. Decision rates are shown at each
model's own thresholds and for the candidate at the champion's too: the first say what
promoting it changes for reviewers and customers, the last how much of that is the model
rather than its thresholds. Feature changes compare the share of total LightGBM gain each
feature has in the two native models.

The report is a JSON-ready dict (NaN written as null) built up step by step; `format_report`
renders whatever parts a retrain got to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from service.features import FEATURES
from service.model.artifact import NATIVE_MODEL_FILE, ONNX_MODEL_FILE, Thresholds
from service.model.onnx_scorer import OnnxScorer
from training.config import TrainSettings
from training.evaluation.evaluate import decision_rates
from training.evaluation.metrics import format_metrics_table
from training.model_build.candidate import FEATURE_NAMES, Candidate, ModelData, period_metrics

if TYPE_CHECKING:
    import lightgbm as lgb

TOP_FEATURE_CHANGES = 5
_SHARE_FORMATS = {
    "champion": "{:.3f}".format,
    "candidate": "{:.3f}".format,
    "change": "{:+.3f}".format,
}


@dataclass(frozen=True)
class Comparison:
    """Champion and candidate on the evaluation window."""

    metrics: dict[str, dict[str, float]]
    """"champion" and "candidate": `training.evaluation.metrics.evaluate` of each."""
    decision_rates: dict[str, dict[str, float]]
    """"champion", "candidate", "candidate_at_champion_thresholds", and "change" (candidate
    minus champion, each at its own thresholds)."""
    feature_changes: list[dict[str, Any]]
    """The largest changes of gain share: feature, champion, candidate, change."""

    def average_precision(self, model: str) -> float:
        """The average precision of "champion" or "candidate"."""
        return self.metrics[model]["average_precision"]


def compare(
    data: ModelData,
    candidate: Candidate,
    champion_dir: Path,
    champion_thresholds: Thresholds,
    settings: TrainSettings,
) -> Comparison:
    """Score both models on `data`'s test period (the evaluation window) and compare them."""
    window = data.periods.test
    features, labels = data.features[window], data.labels[window]
    champion_scores = _onnx_scores(champion_dir / ONNX_MODEL_FILE, features)
    candidate_scores = _onnx_scores(candidate.onnx_model, features)
    metrics = {
        "champion": period_metrics(data, window, champion_scores, settings),
        "candidate": period_metrics(data, window, candidate_scores, settings),
    }
    rates = {
        "champion": decision_rates(labels, champion_scores, champion_thresholds),
        "candidate": decision_rates(labels, candidate_scores, candidate.thresholds),
        "candidate_at_champion_thresholds": decision_rates(
            labels, candidate_scores, champion_thresholds
        ),
    }
    rates["change"] = {
        name: rates["candidate"][name] - rates["champion"][name] for name in rates["champion"]
    }
    import lightgbm  # here: a retrain that declines before comparing never loads it

    champion_booster = lightgbm.Booster(model_file=str(champion_dir / NATIVE_MODEL_FILE))
    return Comparison(metrics, rates, feature_changes(champion_booster, candidate.booster))


def feature_changes(
    champion: lgb.Booster, candidate: lgb.Booster, top: int = TOP_FEATURE_CHANGES
) -> list[dict[str, Any]]:
    """The `top` features whose share of total gain changed most, largest change first."""
    before, after = _gain_shares(champion), _gain_shares(candidate)
    change = after - before
    order = np.argsort(-np.abs(change), kind="stable")[:top]
    return [
        {
            "feature": FEATURE_NAMES[index],
            "champion": float(before[index]),
            "candidate": float(after[index]),
            "change": float(change[index]),
        }
        for index in order
    ]


def json_ready(value: Any) -> Any:
    """`value` with every NaN float replaced by None, inside dicts and lists too."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_ready(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def format_report(report: dict[str, Any]) -> str:
    """The report as text: the parts present, then the verdict and its reason."""
    sections = [_heading(report), _rows(report)]
    if "periods" in report:
        sections.append(_table("periods", pd.DataFrame(report["periods"]).T.to_string()))
    if "metrics" in report:
        comparison = _floats(report["metrics"])
        rates = _floats(report["decision_rates"])
        sections.append(
            _table("metrics on the evaluation window", format_metrics_table(comparison))
        )
        sections.append(
            _table("decision rates on the evaluation window", format_metrics_table(rates))
        )
        changes = pd.DataFrame(report["feature_changes"]).set_index("feature")
        sections.append(
            _table(
                "largest changes of feature importance (share of total gain)",
                changes.to_string(formatters=_SHARE_FORMATS),
            )
        )
    sections.append(f"verdict: {report['verdict']}: {report['reason']}")
    return "\n\n".join(sections)


def _onnx_scores(model: bytes | Path, features: NDArray[np.float32]) -> NDArray[np.float64]:
    return OnnxScorer(model, len(FEATURES)).score_batch(features)


def _gain_shares(booster: lgb.Booster) -> NDArray[np.float64]:
    gains = np.asarray(booster.feature_importance(importance_type="gain"), dtype=np.float64)
    total = gains.sum()
    return gains / total if total > 0 else gains


def _heading(report: dict[str, Any]) -> str:
    champion = report["champion"]
    trigger = report["trigger"] or "none given"
    return (
        f"retrain as of {report['as_of']} (trigger: {trigger})\n"
        f"champion {champion['version']}, data until {champion['data_end']}\n"
        f"new fraud reports since then: {report['new_fraud_reports']} "
        f"({report['min_new_frauds']} needed)"
    )


def _rows(report: dict[str, Any]) -> str:
    rows = report["rows"]
    left_out = ", ".join(
        f"{count} {reason.replace('_', ' ')}" for reason, count in rows["excluded"].items()
    )
    lines = [
        f"logged transactions: {rows['logged']}, usable {rows['usable']}; left out: {left_out}"
    ]
    lines.extend(
        f"used from {source['name']}: {source['rows']} rows, {source['frauds']} frauds"
        for source in report.get("sources", [])
    )
    return "\n".join(lines)


def _table(title: str, body: str) -> str:
    return f"{title}:\n{body}"


def _floats(rows: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float]]:
    """Report rows with null (an undefined metric) back to NaN, which tables print as "-"."""
    return {
        name: {key: math.nan if value is None else value for key, value in row.items()}
        for name, row in rows.items()
    }
