"""What the scoring servers' `/metrics` endpoints say about drift and the shadow challenger.

The retrain loop (`training.retraining.watch`) reads each server's Prometheus text once per look
and keeps, per server: the drift PSI of every feature and of the score
(`service.observability.drift`), the shadow comparison counts by agreement, the version each
alias serves, and the process start time (the drift trigger judges history features only on
servers up long enough). Counters are per process since it started, summed over servers by the
reader.

A server that does not answer, answers with an HTTP error or with text that is not
Prometheus's, is listed in `MetricsLook.unreachable` with the reason: one server down never
stops a look.

Errors:

    ServerMetricsError      a URL that is not http(s), or a server that gave no metrics
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

# A scrape computes every PSI in a few milliseconds; a server this slow is as good as down.
DEFAULT_TIMEOUT_SECONDS = 5.0

FEATURE_PSI = "fraud_drift_psi"
SCORE_PSI = "fraud_drift_score_psi"
SHADOW_COMPARISONS = "fraud_shadow_comparisons_total"
MODEL_INFO = "fraud_model_info"
PROCESS_START = "process_start_time_seconds"
# `service.observability.metrics.SHADOW_AGREEMENT_COUNTERS` labels its two children so.
AGREE, DISAGREE = "agree", "disagree"
SCORE_SUBJECT = "score"


class ServerMetricsError(Exception):
    """A server's metrics could not be read; the message says which and why."""


@dataclass(frozen=True, slots=True)
class ShadowCounts:
    """Shadow comparisons: challenger decisions that agreed with the champion's, or not."""

    agree: int = 0
    disagree: int = 0

    @property
    def comparisons(self) -> int:
        """Every comparison counted."""
        return self.agree + self.disagree

    @property
    def agreement(self) -> float | None:
        """Share of comparisons that agreed; None before the first."""
        return self.agree / self.comparisons if self.comparisons else None

    def __add__(self, other: ShadowCounts) -> ShadowCounts:
        return ShadowCounts(self.agree + other.agree, self.disagree + other.disagree)

    def __sub__(self, other: ShadowCounts) -> ShadowCounts:
        return ShadowCounts(self.agree - other.agree, self.disagree - other.disagree)

    def __str__(self) -> str:
        agreement = "n/a" if self.agreement is None else f"{self.agreement:.3f}"
        return f"{self.comparisons} comparisons, agreement {agreement}"


@dataclass(frozen=True, slots=True)
class ServerMetrics:
    """One server's answer."""

    url: str
    feature_psi: dict[str, float]
    """PSI by feature name; empty while the server's drift window is too small."""
    score_psi: float | None
    shadow: ShadowCounts
    aliases: dict[str, str]
    """Version each alias serves (`fraud_model_info`)."""
    started_at: float | None
    """Unix time the process started, if it says: a new value is a restarted process."""

    def psi(self) -> dict[str, float]:
        """Every PSI it exports, the score's under `SCORE_SUBJECT`."""
        score = {} if self.score_psi is None else {SCORE_SUBJECT: self.score_psi}
        return self.feature_psi | score


@dataclass(frozen=True, slots=True)
class Psi:
    """One PSI value and where it was seen: `subject` is a feature name or `SCORE_SUBJECT`."""

    subject: str
    value: float
    url: str

    def __str__(self) -> str:
        return f"PSI {self.value:.3f} of {self.subject} at {self.url}"


@dataclass(frozen=True, slots=True)
class MetricsLook:
    """Every server's metrics at one look, and the servers that gave none."""

    servers: tuple[ServerMetrics, ...]
    unreachable: dict[str, str] = field(default_factory=dict)
    """URL to the reason it gave no metrics."""

    @property
    def shadow(self) -> ShadowCounts:
        """Shadow counts summed over the servers that answered."""
        return sum((server.shadow for server in self.servers), ShadowCounts())

    def highest_psi(
        self, judged: Callable[[ServerMetrics], dict[str, float]] = ServerMetrics.psi
    ) -> Psi | None:
        """The highest PSI on any server, of the features (or score) `judged` keeps of each
        (default: all); None if there is none."""
        return max(
            (
                Psi(subject, value, server.url)
                for server in self.servers
                for subject, value in judged(server).items()
            ),
            key=lambda psi: psi.value,
            default=None,
        )


def read_servers(urls: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> MetricsLook:
    """Read every server's metrics; those that give none are listed with the reason."""
    servers: list[ServerMetrics] = []
    unreachable: dict[str, str] = {}
    for url in urls:
        try:
            servers.append(fetch_metrics(url, timeout=timeout))
        except ServerMetricsError as error:
            unreachable[url] = str(error)
    return MetricsLook(tuple(servers), unreachable)


def fetch_metrics(url: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> ServerMetrics:
    """One server's metrics, read from its http(s) `/metrics` URL."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ServerMetricsError(f"{url}: only http and https metrics URLs are read")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        raise ServerMetricsError(f"{url}: HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise ServerMetricsError(f"{url}: {error.reason}") from error
    except (OSError, http.client.HTTPException, UnicodeDecodeError) as error:
        raise ServerMetricsError(f"{url}: {error}") from error
    return parse_metrics(url, text)


def parse_metrics(url: str, text: str) -> ServerMetrics:
    """The figures this module reads, from Prometheus text exposition `text`."""
    try:
        samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
    except ValueError as error:
        raise ServerMetricsError(f"{url}: not Prometheus text ({error})") from error
    return ServerMetrics(
        url=url,
        feature_psi=_by_label(samples, FEATURE_PSI, "feature"),
        score_psi=_single(samples, SCORE_PSI),
        shadow=_shadow_counts(_by_label(samples, SHADOW_COMPARISONS, "agreement")),
        aliases={
            labels["alias"]: labels["version"]
            for name, labels, value in samples
            if name == MODEL_INFO and value == 1 and {"alias", "version"} <= labels.keys()
        },
        started_at=_single(samples, PROCESS_START),
    )


_Sample = tuple[str, dict[str, str], float]


def _by_label(samples: Iterable[_Sample], metric: str, label: str) -> dict[str, float]:
    return {
        labels[label]: value
        for name, labels, value in samples
        if name == metric and label in labels
    }


def _single(samples: Iterable[_Sample], metric: str) -> float | None:
    return next((value for name, _labels, value in samples if name == metric), None)


def _shadow_counts(by_agreement: dict[str, float]) -> ShadowCounts:
    return ShadowCounts(int(by_agreement.get(AGREE, 0)), int(by_agreement.get(DISAGREE, 0)))
