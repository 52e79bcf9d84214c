"""MLServer as the suite's peer, the parts that need no MLServer: its repository files,
the check of the interpreter given, the feature rows it would be sent."""

from __future__ import annotations

import json
import venv
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from benchmarks.load.traffic import load_history
from benchmarks.measurements.memory import champion_feature_config
from benchmarks.servers.mlserver_peer import (
    MODEL_NAME,
    MODEL_SETTINGS_FILE,
    RUNTIME,
    SETTINGS_FILE,
    MLServerPorts,
    check_interpreter,
    feature_rows,
    write_repository,
)
from service.model.artifact import NATIVE_MODEL_FILE
from service.model.registry import Registry
from tests.conftest import TrainedModel


def test_the_repository_serves_the_model_file_on_loopback_ports(tmp_path: Path):
    """settings.json: 127.0.0.1, the three ports, the workers, no debug log; the model's
    settings: the LightGBM runtime on the model file, no adaptive batching."""
    model_file = tmp_path / "v1" / NATIVE_MODEL_FILE
    ports = MLServerPorts(41000, 41001, 41002)

    root = write_repository(tmp_path / "repo", model_file, "v1", ports, workers=0)

    server = json.loads((root / SETTINGS_FILE).read_text())
    model = json.loads((root / MODEL_NAME / MODEL_SETTINGS_FILE).read_text())
    assert server["host"] == "127.0.0.1"
    assert (server["http_port"], server["grpc_port"], server["metrics_port"]) == (
        41000,
        41001,
        41002,
    )
    assert server["parallel_workers"] == 0
    assert server["debug"] is False
    assert server["model_repository_root"] == str(root)
    assert model["implementation"] == RUNTIME
    assert model["parameters"] == {"uri": str(model_file.resolve()), "version": "v1"}
    assert model["max_batch_size"] == 0


def test_an_interpreter_without_mlserver_is_refused_with_the_remedy(tmp_path: Path):
    """A real Python that cannot import mlserver: ValueError naming the modules and pip."""
    venv.create(tmp_path / "bare", with_pip=False)
    python = tmp_path / "bare" / "bin" / "python"

    with pytest.raises(ValueError, match="cannot import mlserver and mlserver_lightgbm") as error:
        check_interpreter(python)

    assert "pip install mlserver mlserver-lightgbm" in str(error.value)


def test_a_file_that_is_not_an_executable_is_refused(tmp_path: Path):
    """A missing path, or a file without the execute bit: not an executable file."""
    plain = tmp_path / "python"
    plain.write_text("")

    for path in (tmp_path / "missing", plain):
        with pytest.raises(ValueError, match="not an executable file"):
            check_interpreter(path)


def test_feature_rows_fit_the_champions_lightgbm_model(trained_model: TrainedModel):
    """One float32 row per request, as wide as the model's features, scored by LightGBM
    as probabilities (what MLServer's runtime will predict on them)."""
    history = load_history(trained_model.history, 50)
    config = champion_feature_config(trained_model.registry)
    model_dir = Registry(trained_model.registry).artifact_dir(trained_model.version)
    booster = lgb.Booster(model_file=str(model_dir / NATIVE_MODEL_FILE))

    rows = feature_rows(history.requests, config)

    assert rows.dtype == np.float32
    assert rows.shape == (50, booster.num_feature())
    scores = np.asarray(booster.predict(rows, num_threads=1))
    assert np.all((scores >= 0) & (scores <= 1))
    assert len(np.unique(rows, axis=0)) > 1  # each swipe's own features, not one row
