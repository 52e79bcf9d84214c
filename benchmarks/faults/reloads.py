"""`fraud-bench reloads`: promotions under load, judged.

One `fraud-serve` polling a copy of the registry every 0.1 s; an open loop of unary
`Score` at `rate`; every `every` seconds the champion and a republished copy of it (the
same model under another version name: every swap a full load) are promoted in turn,
`promotions` times. Judged: no failed call; RSS growth from the first promotion to the end
within `RSS_LIMIT_MIB` (the LMDB state's mapped file left out: it grows with the traffic's
new cards and transactions, within its own bounds); no stale answer
(`benchmarks.faults.answers.stale_answers`, against the swaps the server logged,
`model_swapped`, not the promotions: on a starved machine a swap lagged its promotion by up
to 3 s, and an answer would be placed in the wrong promotion); and, as figures, how many
promotions answered and how long the swaps lagged their promotion. The champion and two
republished copies are promoted in turn, so that an answer's version names its swap
unambiguously within the tolerance given to a log line's time.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.faults.answers import epochs_answered, failed, p99_ms, per_second, stale_answers
from benchmarks.faults.criteria import Scenario, at_most, equal
from benchmarks.faults.driver import RecordingLoad, phased_schedule
from benchmarks.faults.server import ManagedServer
from benchmarks.load.traffic import NO_OUTCOMES, build_calls, load_history, new_run_id
from benchmarks.reload_latency import republished
from benchmarks.servers.launch import fraud_serve_spec
from service.model.registry import CHAMPION, Registry
from training.registry.publishing import promote

RSS_LIMIT_MIB = 50.0
# A swap's log line is written just after the swap: an answer of the new version may come
# back before the line's time.
SWAP_LOG_TOLERANCE = 0.5
POLL_SECONDS = "0.1"
_MIB = 1024 * 1024
# Steady load before the first promotion and after the last.
_MARGIN_SECONDS = 1.0


@dataclass(frozen=True)
class ReloadSettings:
    registry: Path
    data: Path
    out: Path
    promotions: int = 200
    every: float = 1.0
    rate: float = 300.0

    def __post_init__(self) -> None:
        if not 1 <= self.promotions <= 10_000 or not 0.2 <= self.every <= 600:
            raise ValueError("--promotions must be 1 to 10,000 and --every 0.2 to 600 s")
        if not 1 <= self.rate <= 20_000:
            raise ValueError("--rate must be 1 to 20,000 calls/s")


def run_reloads(settings: ReloadSettings) -> list[Scenario]:
    registry = copy_registry(settings.registry, settings.out / "reloads-registry")
    champion = Registry(registry).alias(CHAMPION)
    if champion is None:
        raise ValueError(f"{settings.registry} has no champion")
    # Three versions in turn: an answer's version then names its promotion unambiguously
    # while a swap lags its promotion by less than two promotions (with two, by less than one).
    first_copy = republished(registry, champion)
    versions = (champion, first_copy, republished(registry, first_copy))
    length = settings.promotions * settings.every + 2 * _MARGIN_SECONDS
    history = load_history(settings.data, round(settings.rate * length) + 1)
    calls = build_calls(history, new_run_id(), NO_OUTCOMES)
    spec = fraud_serve_spec("reloads", registry)
    spec = dataclasses.replace(
        spec, environment=spec.environment | {"FRAUD_MODELS__POLL_SECONDS": POLL_SECONDS}
    )
    with ManagedServer(spec, settings.out / "reloads-server") as server:
        load = RecordingLoad(server.target, phased_schedule(calls, [(length, settings.rate)]))
        load.begin()
        promotions = [(0.0, champion)]
        rss: list[tuple[float, float]] = []
        anonymous: list[float] = []
        time.sleep(_MARGIN_SECONDS)
        for number in range(settings.promotions):
            version = versions[(number + 1) % len(versions)]
            promote(registry, version, reason="fraud-bench reloads")
            promotions.append((load.now(), version))
            rss.append((load.now(), _without_state(server)))
            anonymous.append(server.anonymous_bytes() / _MIB)
            time.sleep(max(0.0, _MARGIN_SECONDS + (number + 1) * settings.every - load.now()))
        records = load.join()
        rss.append((load.now(), _without_state(server)))
        anonymous.append(server.anonymous_bytes() / _MIB)
        swaps = server.swaps(load.start_wall)
    growth = rss[-1][1] - rss[0][1]
    seconds, answers, p99 = per_second(records, length)
    fails = failed(records)
    return [
        Scenario(
            "reloads",
            [
                equal("no failed call", len(fails), 0, _codes(fails)),
                at_most(
                    "RSS growth over the promotions, the state's file mapping aside",
                    round(growth, 1),
                    RSS_LIMIT_MIB,
                    " MiB",
                    f"of it anonymous (heap): {anonymous[-1] - anonymous[0]:.1f} MiB",
                ),
                equal(
                    "no answer from the old version once the new one answered",
                    stale_answers(records, swaps, SWAP_LOG_TOLERANCE),
                    0,
                    f"against the {len(swaps)} swaps the server logged",
                ),
            ],
            figures={
                "calls": len(records),
                "promotions": settings.promotions,
                "promotions_answered": epochs_answered(records, promotions) - 1,
                "swaps_logged": len(swaps),
                "swap_lag_max_s": _lag(promotions, swaps),
                "p99_ms": round(p99_ms(records), 2),
                "rss_first_mib": round(rss[0][1], 1),
                "rss_end_mib": round(rss[-1][1], 1),
            },
            series={
                "answers per second": (seconds, answers),
                "p99 per second (ms)": (seconds, p99),
                "RSS without the state mapping (MiB)": ([t for t, _ in rss], [m for _, m in rss]),
                "anonymous RSS (MiB)": ([t for t, _ in rss], anonymous),
            },
        )
    ]


def _without_state(server: ManagedServer) -> float:
    """RSS in MiB without the feature state's file mapping, which grows with the traffic
    (new cards, terminals, transactions), not with reloads."""
    return (server.rss_bytes() - server.state_mapping_bytes()) / _MIB


def _lag(promotions: Sequence[tuple[float, str]], swaps: Sequence[tuple[float, str]]) -> float:
    """The longest time from a promotion to the server's swap to its version."""
    lags = []
    for at, version in promotions[1:]:
        later = [when for when, swapped in swaps if swapped == version and when >= at]
        if later:
            lags.append(min(later) - at)
    return round(max(lags), 3) if lags else float("nan")


def copy_registry(source: Path, target: Path) -> Path:
    """A fresh copy of the registry at `target` (promotions never touch the original)."""
    if target.exists():
        shutil.rmtree(target)
    return Path(shutil.copytree(source, target))


def _codes(records: Sequence[object]) -> str:
    counts: dict[str, int] = {}
    for record in records:
        code = getattr(record, "code", "?")
        counts[code] = counts.get(code, 0) + 1
    return " ".join(f"{code} {count}" for code, count in sorted(counts.items()))
