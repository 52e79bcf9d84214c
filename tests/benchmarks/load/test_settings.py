"""A load's settings taken by name from a command line's options or the suite's settings."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from benchmarks.load.settings import SHARED_SETTINGS, LoadSettings, load_with
from benchmarks.suite_settings import SuiteSettings

TARGET = "127.0.0.1:50051"


def test_each_shared_setting_is_read_from_the_source():
    """Every name in SHARED_SETTINGS is a field of the load, and its value comes across."""
    defaults = LoadSettings(TARGET, "open", "unary", seconds=1.0)
    changed = {
        "seconds": 7.0, "arrivals": "poisson", "in_flight": 9, "max_in_flight": 11,
        "processes": 3, "connections": 5, "streams": 6, "timeout": 2.5, "seed": 13,
        "batch_size": 17,
    }  # fmt: skip
    assert set(changed) == set(SHARED_SETTINGS)
    assert all(getattr(defaults, name) != value for name, value in changed.items())

    load = load_with(argparse.Namespace(**changed), TARGET, "closed", "stream", 250.0)

    assert {name: getattr(load, name) for name in SHARED_SETTINGS} == changed
    assert (load.target, load.mode, load.rpc, load.rate) == (TARGET, "closed", "stream", 250.0)


def test_a_setting_the_source_lacks_keeps_its_default():
    """The suite has no max_in_flight: its loads keep the load's own default."""
    suite = SuiteSettings(seconds=3.0, in_flight=8)

    load = suite.load(TARGET, "open", "unary", 100.0)

    assert load.max_in_flight == LoadSettings.max_in_flight
    assert (load.seconds, load.in_flight, load.batch_size) == (3.0, 8, suite.batch_size)
    assert "max_in_flight" not in {field.name for field in dataclasses.fields(SuiteSettings)}


def test_a_source_out_of_bounds_is_refused():
    with pytest.raises(ValueError, match="processes"):
        load_with(argparse.Namespace(seconds=1.0, processes=99), TARGET, "open", "unary", 100.0)
