"""When each request of an open-loop run is due.

An open-loop client sends request i at its due time whatever the earlier answers are
doing, and measures its latency from that due time: a server (or client) that stalls
makes every request due during the stall late, and the latency shows it. A closed-loop
client instead waits for an answer before sending again, so a stall delays only the few
requests in flight and hides the rest (coordinated omission).

Two arrival processes, both for a mean `rate` per second and seeded:

    constant    request i due at i / rate
    poisson     independent exponential gaps of mean 1 / rate, the first request at 0
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from benchmarks.load.settings import ARRIVALS as ARRIVALS
from benchmarks.load.settings import Arrivals as Arrivals


def due_offsets(
    count: int, rate: float, arrivals: Arrivals = "constant", seed: int = 0
) -> npt.NDArray[np.float64]:
    """Seconds from the start of the run at which each of `count` requests is due."""
    if count < 0 or rate <= 0:
        raise ValueError("count must be 0 or more and rate above 0")
    if arrivals == "constant":
        return np.arange(count, dtype=np.float64) / rate
    if arrivals == "poisson":
        gaps = np.random.default_rng(seed).exponential(1.0 / rate, count)
        return np.concatenate(([0.0], np.cumsum(gaps[:-1]))) if count else gaps
    raise ValueError(f"unknown arrivals {arrivals!r}: use one of {ARRIVALS}")
