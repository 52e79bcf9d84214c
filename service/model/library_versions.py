"""Training's library versions against the server's own: where silent score drift comes from.

The manifest records the versions training used (`training.model_build.libraries`). Of
those, the ones that change what the server computes are compared with the versions
installed here:

    onnxruntime   runs the scoring graph
    numpy         carries every feature vector, score and reason table

LightGBM is not one of them: the server never runs it (training exports the ONNX graph and
compiles the reason tables, and the golden replay checks both).

A different major version (the first number) is an incompatible release by the libraries'
own conventions: `load_model` refuses it unless told otherwise. Any other difference is
reported as "minor": logged and exported as a metric, but served, since the golden replay
has just shown the scores did not move. A library training did not record is not compared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Literal

SERVING_LIBRARIES = ("onnxruntime", "numpy")

Severity = Literal["major", "minor"]

_LEADING_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True, slots=True)
class LibraryDifference:
    """A serving library whose version differs from training's."""

    library: str
    trained: str
    serving: str
    severity: Severity

    def describe(self) -> str:
        """E.g. "onnxruntime 1.18.0 in training, 1.20.1 here (minor)"."""
        return f"{self.library} {self.trained} in training, {self.serving} here ({self.severity})"


def installed_versions() -> dict[str, str]:
    """The version of each serving library installed in this process's environment."""
    return {name: metadata.version(name) for name in SERVING_LIBRARIES}


def differences(
    trained: Mapping[str, str], serving: Mapping[str, str]
) -> tuple[LibraryDifference, ...]:
    """The serving libraries whose versions differ, in `SERVING_LIBRARIES` order."""
    found = []
    for library in SERVING_LIBRARIES:
        trained_version = trained.get(library)
        serving_version = serving.get(library)
        if trained_version is None or serving_version is None:
            continue
        if trained_version == serving_version:
            continue
        major = _major(serving_version)
        severity: Severity = (
            "minor" if major is not None and major == _major(trained_version) else "major"
        )
        found.append(LibraryDifference(library, trained_version, serving_version, severity))
    return tuple(found)


def _major(version: str) -> int | None:
    """The leading number of a version string; None when it has none ("not installed")."""
    match = _LEADING_NUMBER.match(version)
    return None if match is None else int(match.group())
