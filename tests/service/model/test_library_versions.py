"""Tests for service.model.library_versions: which training-vs-serving differences are major."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

from service.model.library_versions import (
    SERVING_LIBRARIES,
    LibraryDifference,
    differences,
    installed_versions,
)

SERVING = {"onnxruntime": "1.20.1", "numpy": "2.1.3"}


def _severity(trained: str, serving: str) -> str | None:
    """The severity of one onnxruntime difference; None when there is none."""
    found = differences({"onnxruntime": trained}, {"onnxruntime": serving})
    assert len(found) <= 1
    return found[0].severity if found else None


def test_equal_versions_differ_in_nothing() -> None:
    """Training's versions installed here: no difference at all."""
    assert differences(dict(SERVING), SERVING) == ()


@pytest.mark.parametrize(
    ("trained", "serving"),
    [("1.18.0", "1.20.1"), ("1.20.0", "1.20.1"), ("1.20", "1.20.0"), ("1.20.1rc1", "1.20.1")],
)
def test_a_minor_or_patch_difference_is_minor(trained: str, serving: str) -> None:
    """Same first number, anything else different: "minor"."""
    assert _severity(trained, serving) == "minor"


@pytest.mark.parametrize(("trained", "serving"), [("1.20.1", "2.0.0"), ("2.0.0", "1.20.1")])
def test_another_first_number_is_major(trained: str, serving: str) -> None:
    """A different major version, up or down, is "major"."""
    assert _severity(trained, serving) == "major"


@pytest.mark.parametrize(
    ("trained", "serving"),
    [
        ("not installed", "1.20.1"),
        ("1.20.1", "not installed"),
        ("dev", "1.20.1"),
        ("1.20.1", "v1.20.1"),
        ("not installed", "unknown"),
    ],
)
def test_a_missing_or_unparsable_version_is_major(trained: str, serving: str) -> None:
    """Without a leading number on either side the versions cannot be vouched for."""
    assert _severity(trained, serving) == "major"


def test_a_difference_says_what_was_found() -> None:
    """The difference names the library, both versions and the severity."""
    (found,) = differences({"numpy": "1.26.4"}, SERVING)
    assert found == LibraryDifference("numpy", "1.26.4", "2.1.3", "major")
    assert found.describe() == "numpy 1.26.4 in training, 2.1.3 here (major)"


def test_libraries_training_did_not_record_are_not_compared() -> None:
    """Only serving libraries both sides know are compared; others never count."""
    trained = {"numpy": "1.26.4", "lightgbm": "3.3.5", "pandas": "1.0.0", "python": "3.8.0"}
    serving = {**SERVING, "lightgbm": "4.5.0", "pandas": "3.0.0", "python": "3.11.7"}
    assert [item.library for item in differences(trained, serving)] == ["numpy"]
    assert differences(SERVING, {"numpy": "2.1.3"}) == ()


def test_differences_come_in_serving_library_order() -> None:
    """Whatever the mappings' order, the result follows SERVING_LIBRARIES."""
    trained = {"numpy": "1.26.4", "lightgbm": "4.3.0", "onnxruntime": "1.18.0"}
    serving = dict(reversed(SERVING.items()))
    assert tuple(item.library for item in differences(trained, serving)) == SERVING_LIBRARIES


def test_installed_versions_are_this_environments() -> None:
    """Each serving library's version is the one this process imports."""
    assert installed_versions() == {
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
