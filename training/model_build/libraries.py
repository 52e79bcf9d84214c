"""Versions of the libraries a model was built with, recorded in its manifest.

Serving compares them with its own: a converter or runtime that changed between training
and serving is the classic source of silent score drift.
"""

from __future__ import annotations

import platform
from importlib import metadata

RECORDED = ("lightgbm", "onnx", "onnxmltools", "onnxruntime", "numpy", "scikit-learn", "pandas")


def library_versions() -> dict[str, str]:
    """Python's version and each recorded library's installed version."""
    versions = {"python": platform.python_version()}
    for name in RECORDED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
