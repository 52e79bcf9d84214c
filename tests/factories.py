"""Test factories shared across packages: valid manifests, fake artifacts on disk and raw
transactions."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.core.domain import NANOS_PER_SECOND, RawTransaction
from service.features.config import FeatureConfig
from service.model.artifact import (
    MANIFEST_FILE,
    NATIVE_MODEL_FILE,
    ONNX_MODEL_FILE,
    DataFingerprint,
    GateResult,
    GoldenSample,
    Manifest,
    ManifestFeature,
    Period,
    Thresholds,
    sha256_file,
)

# A file beside the models, as the real reports are.
REPORT_FILE = "report.json"
T0_NS = 1_704_067_200 * NANOS_PER_SECOND  # 2024-01-01T00:00:00Z


def make_manifest(**changes: Any) -> Manifest:
    """A valid manifest with plausible values and no files; `changes` replace fields."""
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)
    fields: dict[str, Any] = {
        "version": "",
        "created_at": datetime(2024, 3, 2, 12, 30, 5, tzinfo=UTC),
        "feature_engine_version": 1,
        "feature_config": FeatureConfig(),
        "features": [ManifestFeature(name="amount"), ManifestFeature(name="hour_of_day")],
        "thresholds": Thresholds(review=0.5, decline=0.9, policy="1% review rate"),
        "metrics": {"test": {"pr_auc": 0.61, "recall_at_review": 0.72}},
        "training_data": DataFingerprint(
            sha256="ab" * 32, rows=1000, first_event=start, last_event=end, source="tx.parquet"
        ),
        "periods": {"train": Period(start=start, end=end, rows=1000, frauds=12)},
        "training_config": {"num_leaves": 31},
        "libraries": {"lightgbm": "4.3.0"},
        "gates": [GateResult(name="pr_auc", passed=True, detail="0.61 >= 0.5")],
        "golden_sample": GoldenSample(features=[[12.5, 3.0]], scores=[0.01]),
        "files": {},
    }
    fields.update(changes)
    return Manifest(**fields)


def write_model_files(directory: Path, content: str = "a") -> None:
    """Dummy model and report files; a different `content` gives different hashes."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ONNX_MODEL_FILE).write_bytes(f"onnx {content}".encode())
    (directory / NATIVE_MODEL_FILE).write_text(f"tree {content}\n", encoding="utf-8")
    (directory / REPORT_FILE).write_text('{"rows": 1000}', encoding="utf-8")


def write_artifact(directory: Path, content: str = "a", **changes: Any) -> Manifest:
    """A complete artifact in `directory`: model files and a manifest listing their hashes."""
    write_model_files(directory, content)
    files = {
        path.name: sha256_file(path) for path in directory.iterdir() if path.name != MANIFEST_FILE
    }
    manifest = make_manifest(files=files, **changes)
    (directory / MANIFEST_FILE).write_text(manifest.model_dump_json(), encoding="utf-8")
    return manifest


def flip_first_byte(path: Path) -> None:
    """Corrupt one byte of `path`, keeping its length."""
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


def raw_transaction(number: int, **changes: Any) -> RawTransaction:
    """Swipe "tx-`number`" of card-1 at term-1, 25.00 EUR, `number` minutes after T0_NS;
    `changes` replace fields."""
    raw = RawTransaction(
        transaction_id=f"tx-{number}",
        card_id="card-1",
        terminal_id="term-1",
        merchant_id="merch-1",
        amount_minor=2_500,
        currency="EUR",
        timestamp_ns=T0_NS + number * 60 * NANOS_PER_SECOND,
        mcc=5411,
        entry_mode=1,
        card_present=True,
        country="FR",
    )
    return dataclasses.replace(raw, **changes)
