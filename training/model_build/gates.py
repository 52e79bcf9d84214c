"""Quality gates: what a candidate must show before it may be published.

Each gate yields a `GateResult` recorded in the manifest; any failure stops the publish and
`fraud-train` exits non-zero naming the gate and by how much it missed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from service.model.artifact import GateResult
from training.config import GateConfig


class GateFailure(Exception):
    """At least one gate failed; nothing was published."""

    def __init__(self, results: Sequence[GateResult]) -> None:
        self.results = list(results)
        failed = [f"{result.name}: {result.detail}" for result in results if not result.passed]
        super().__init__("quality gate failed: " + "; ".join(failed))


def metric_floors(
    test_metrics: Mapping[str, float], config: GateConfig, k: int
) -> list[GateResult]:
    """Each test metric at or above its configured floor."""
    floors = (
        ("auc_roc", config.min_auc_roc),
        ("average_precision", config.min_average_precision),
        (f"card_precision_at_{k}", config.min_card_precision_at_100),
    )
    return [_at_least(f"floor:{name}", test_metrics[name], floor) for name, floor in floors]


def no_regression(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    champion_version: str | None,
    config: GateConfig,
) -> list[GateResult]:
    """The candidate is not worse than the champion on the same test data, within tolerance."""
    if champion is None:
        return [GateResult(name="no_regression", passed=True, detail="no comparable champion")]
    results = []
    for name in ("auc_roc", "average_precision"):
        floor = champion[name] - config.max_regression
        result = _at_least(f"no_regression:{name}", candidate[name], floor)
        detail = f"{result.detail} (champion {champion_version}: {champion[name]:.4f})"
        results.append(result.model_copy(update={"detail": detail}))
    return results


def parity(gap: float, config: GateConfig) -> GateResult:
    """ONNX and native LightGBM agree on every test row."""
    passed = gap <= config.max_parity_gap
    detail = f"max |onnx - lightgbm| = {gap:.2e}, limit {config.max_parity_gap:.0e}"
    return GateResult(name="onnx_parity", passed=passed, detail=detail)


def require(results: Sequence[GateResult]) -> None:
    """Raise GateFailure unless every result passed."""
    if not all(result.passed for result in results):
        raise GateFailure(results)


def _at_least(name: str, value: float, floor: float) -> GateResult:
    if math.isnan(value):
        return GateResult(name=name, passed=False, detail="could not be computed (one class only)")
    passed = value >= floor
    verdict = "ok" if passed else f"short by {floor - value:.4f}"
    return GateResult(name=name, passed=passed, detail=f"{value:.4f} >= {floor:.4f}: {verdict}")
