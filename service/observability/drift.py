"""Drift monitoring: recent traffic against the reference the model was trained for.

How a distribution is binned and compared (PSI) is `service.observability.drift_bins`'s;
the reference itself travels in the manifest.

`DriftMonitor` keeps the last `window` scored transactions (default 10,000) in one
preallocated ring buffer of packed rows (the float32 features, the score, the decision),
viewed as a numpy record array. `record` packs one row with `struct.pack_into` and bumps a
counter, which costs less than assigning the Python floats into numpy rows, and nothing is
binned per request. A scrape sorts each column of the window (numpy sorts release the GIL)
and counts the values below each edge by binary search. A window
holding fewer than `min_rows` (default 500) exports no PSI and no live decision rates: the
series are absent, so alerts on them cannot fire on a new or nearly empty window.

`DriftCollector` is the Prometheus collector (register it once). It follows the deciding
model: each answer it hears names the deciding model's reference, and a new reference starts a new,
empty window, since another model's scores are not comparable. Metrics, all gauges:

    fraud_drift_psi{feature}            PSI of each model feature (closed set: the model's)
    fraud_drift_score_psi               PSI of the model's score
    fraud_drift_window_transactions     rows in the window
    fraud_decision_rate{decision}       share of the window's decisions
    fraud_decision_rate_expected{decision}  the same share over the reference period

Features with a daily or weekly cycle (hour_of_day, day_of_week) drift whenever the
window spans less than a cycle, as decision rates may: read them against the window's
duration.

A scrape that finds a PSI above `PSI_MAJOR` (0.25), for the score or a feature other than
the cyclic ones, logs a "drift_detected" warning naming them, at most once every
`warn_interval_seconds` (15 minutes by default): the scrape, not the request, pays for it.

Threading: `record` runs on the scoring thread and `collect` on the metrics server's
thread, with no lock (one would cost a large share of `record`). A row is written before
the counter that covers it is bumped, and a scrape reads the counter once, then reads each
value of the window once. A row written during the scrape (a few, at thousands of scores a
second) can only replace, in each column, one old value by a newer one or by a mix of their
bytes: each bin count is off by at most the number of such rows, out of thousands. PSI is
computed column by column, never across columns, so a row that is new in some columns
and old in others does no other harm.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import structlog
from numpy.typing import NDArray
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from service.core.domain import Decision, ScoreResult, Transaction
from service.observability.drift_bins import (
    CYCLIC_FEATURES,
    Bins,
    DriftReference,
    FloatArray,
    psi,
    search_edges,
    sorted_shares,
)
from service.observability.logs import Throttle

PSI_MAJOR = 0.25
DRIFT_WARNING_INTERVAL_SECONDS = 900.0
DEFAULT_WINDOW = 10_000
MIN_WINDOW_ROWS = 500
# The label each decision has in the decision-rate metrics and the reference's rates.
_LABELS = {decision: decision.name.lower() for decision in Decision}


_log = structlog.get_logger(__name__)


class _Binning(NamedTuple):
    search_edges: NDArray[np.float64]
    expected: NDArray[np.float64]

    @classmethod
    def of(cls, bins: Bins) -> _Binning:
        return cls(search_edges(bins.edges), np.array(bins.proportions, dtype=np.float64))

    def psi(self, sorted_values: FloatArray) -> float:
        return psi(sorted_shares(sorted_values, self.search_edges), self.expected)


@dataclass(frozen=True)
class DriftSnapshot:
    """The window at one instant; PSI and live rates are empty below the minimum rows."""

    rows: int
    feature_psi: dict[str, float]
    score_psi: float | None
    decision_rates: dict[str, float]


_NO_WINDOW = DriftSnapshot(0, {}, None, {})


class DriftMonitor:
    """The last `window` scored transactions of one model, compared with its reference.

    `record` belongs to one thread; `snapshot` may run on another (module docstring).
    """

    def __init__(
        self,
        reference: DriftReference,
        *,
        window: int = DEFAULT_WINDOW,
        min_rows: int = MIN_WINDOW_ROWS,
    ) -> None:
        """An empty window of `window` rows; PSI is computed from `min_rows` rows on."""
        if not 1 <= min_rows <= window:
            raise ValueError(f"need 1 <= min_rows ({min_rows}) <= window ({window})")
        self.reference = reference
        self._window = window
        self._min_rows = min_rows
        self._feature_binnings = [_Binning.of(bins) for bins in reference.features]
        self._score_binning = _Binning.of(reference.score)
        # One packed record per row: features in float32 as the model reads them (they round
        # exactly as training's matrix did), the score, the decision. One struct.pack_into
        # per row costs half of writing numpy arrays from Python floats.
        width = len(reference.features)
        packer = struct.Struct(f"<{width}fdb")
        self._pack_into = packer.pack_into
        self._row_size = packer.size
        self._buffer = bytearray(window * packer.size)
        self._records = np.frombuffer(self._buffer, dtype=_record_dtype(width))
        self._recorded = 0

    def record(self, features: Sequence[float], score: float, decision: Decision) -> None:
        """Add one scored transaction, replacing the oldest once the window is full.

        `features` holds one value per reference feature, in the reference's order.
        """
        index = self._recorded % self._window
        try:
            self._pack_into(self._buffer, index * self._row_size, *features, score, decision)
        except OverflowError:  # a value beyond float32: store it as the model reads it, inf
            with np.errstate(over="ignore"):
                self._records[index] = (features, score, decision)
        self._recorded += 1  # last: the row is complete before a snapshot counts it

    def snapshot(self) -> DriftSnapshot:
        """PSI per feature and for the score, and live decision rates, over the window."""
        rows = min(self._recorded, self._window)
        if rows < self._min_rows:
            return DriftSnapshot(rows, {}, None, {})
        records = self._records[:rows]
        columns = records["features"].T.copy()  # one feature per contiguous row
        columns.sort(axis=1)
        feature_psi = {
            bins.name: binning.psi(column)
            for bins, binning, column in zip(
                self.reference.features, self._feature_binnings, columns, strict=True
            )
        }
        score_psi = self._score_binning.psi(np.sort(records["score"]))
        return DriftSnapshot(rows, feature_psi, score_psi, _decision_rates(records["decision"]))


def _record_dtype(width: int) -> np.dtype[np.void]:
    """The numpy view of a row packed by struct format f"<{width}fdb" (no padding)."""
    return np.dtype([("features", "<f4", (width,)), ("score", "<f8"), ("decision", "i1")])


def _decision_rates(decisions: NDArray[np.int8]) -> dict[str, float]:
    counts = np.bincount(decisions, minlength=len(Decision) + 1)
    return {label: float(counts[decision]) / decisions.size for decision, label in _LABELS.items()}


class ReferencedModel(Protocol):
    """A model that carries the drift reference of its test period (`LoadedModel`)."""

    @property
    def drift_reference(self) -> DriftReference | None: ...


class DriftCollector:
    """Prometheus collector of the deciding model's drift; fed on the scoring thread.

    Register once: `prometheus_client.REGISTRY.register(collector)`.
    """

    def __init__(
        self,
        *,
        window: int = DEFAULT_WINDOW,
        min_rows: int = MIN_WINDOW_ROWS,
        warn_interval_seconds: float = DRIFT_WARNING_INTERVAL_SECONDS,
    ) -> None:
        """No window until the first `record`; each reference gets `window` rows.

        A scrape finding major drift logs it, once per `warn_interval_seconds` at most.
        """
        self._window = window
        self._min_rows = min_rows
        self._warnings = Throttle(warn_interval_seconds)
        self._reference: DriftReference | None = None
        self._monitor: DriftMonitor | None = None

    @property
    def monitor(self) -> DriftMonitor | None:
        """The window of the model that scored last; None when it carried no reference."""
        return self._monitor

    def on_answer(
        self,
        tx: Transaction,
        features: Sequence[float] | None,
        result: ScoreResult,
        model: ReferencedModel | None,
    ) -> None:
        """Add a transaction the model decided (`service.core.ports.AnswerListener`);
        fallback answers are left out: no model read their features."""
        if model is not None and features is not None:
            self.record(model.drift_reference, features, result.score, result.decision)

    def record(
        self,
        reference: DriftReference | None,
        features: Sequence[float],
        score: float,
        decision: Decision,
    ) -> None:
        """Add a transaction scored by the model whose manifest carries `reference`.

        A reference other than the last one's (a model swap) starts a new, empty window;
        None (an artifact without a reference) stops monitoring until one arrives.
        """
        if reference is not self._reference:
            self._follow(reference)
        monitor = self._monitor
        if monitor is not None:
            monitor.record(features, score, decision)

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples: registration computes nothing."""
        return _families(_NO_WINDOW, {})

    def collect(self) -> Iterable[Metric]:
        """The metric families with the window's values, computed now; warns of drift."""
        monitor = self._monitor  # read once: a swap during the scrape changes nothing here
        if monitor is None:
            return _families(_NO_WINDOW, {})
        snapshot = monitor.snapshot()
        self._warn_of_drift(snapshot)
        return _families(snapshot, monitor.reference.decision_rates.model_dump())

    def _warn_of_drift(self, snapshot: DriftSnapshot) -> None:
        drifted = {
            name: round(value, 3)
            for name, value in snapshot.feature_psi.items()
            if value > PSI_MAJOR and name not in CYCLIC_FEATURES
        }
        score_psi = snapshot.score_psi
        if not drifted and (score_psi is None or score_psi <= PSI_MAJOR):
            return
        if not self._warnings.ready():
            return
        _log.warning(
            "drift_detected",
            features=drifted,
            score_psi=None if score_psi is None else round(score_psi, 3),
            window_transactions=snapshot.rows,
            threshold=PSI_MAJOR,
        )

    def _follow(self, reference: DriftReference | None) -> None:
        self._monitor = (
            None
            if reference is None
            else DriftMonitor(reference, window=self._window, min_rows=self._min_rows)
        )
        self._reference = reference


def _families(snapshot: DriftSnapshot, expected: dict[str, float]) -> list[Metric]:
    return [
        _labelled(
            "fraud_drift_psi",
            "Population stability index of each model feature over the drift window.",
            "feature",
            snapshot.feature_psi,
        ),
        _unlabelled(
            "fraud_drift_score_psi",
            "Population stability index of the model's score over the drift window.",
            snapshot.score_psi,
        ),
        _unlabelled(
            "fraud_drift_window_transactions",
            "Scored transactions in the drift window.",
            snapshot.rows,
        ),
        _labelled(
            "fraud_decision_rate",
            "Share of the drift window's transactions given each decision.",
            "decision",
            snapshot.decision_rates,
        ),
        _labelled(
            "fraud_decision_rate_expected",
            "Share of the reference period's transactions given each decision.",
            "decision",
            expected,
        ),
    ]


def _labelled(name: str, help_text: str, label: str, values: dict[str, float]) -> Metric:
    family = GaugeMetricFamily(name, help_text, labels=[label])
    for label_value, value in values.items():
        family.add_metric([label_value], value)
    return family


def _unlabelled(name: str, help_text: str, value: float | None) -> Metric:
    family = GaugeMetricFamily(name, help_text)
    if value is not None:
        family.add_metric([], value)
    return family
