"""The names of `fraud-bench chaos`'s scenarios, apart from the scenarios
(`benchmarks.faults.chaos`): the command line offers them without importing what runs them."""

from __future__ import annotations

SCENARIOS = ("kill", "store", "disk", "registry", "overload", "rolling")
