"""The Grafana dashboard in deploy/ as tests read it: its panels, their PromQL queries and
the metric names each query selects."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "fraud-scoring.json"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
PROMQL_OPERATORS = {"and", "or", "unless", "bool", "offset"}


def load_dashboard() -> dict[str, Any]:
    """The dashboard's JSON model."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels() -> list[dict[str, Any]]:
    """The dashboard's panels, rows left out."""
    return [panel for panel in load_dashboard()["panels"] if panel["type"] != "row"]


def expressions() -> list[str]:
    """Every panel's queries, in panel order."""
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once strings, label
    matchers, ranges and grouping clauses are gone, other than functions and operators."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(rf"\b(?:{'|'.join(PROMQL_WORDS)})\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\()?", text):
        name, call = match.groups()
        if call is None and name not in PROMQL_OPERATORS:
            names.add(name)
    return names
