"""The README's grpcurl examples, run as written against a real server on loopback."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from service.app import build_scorer
from service.config.settings import RecordLogSettings, ServerSettings, ServeSettings
from service.features import FeatureEngine
from service.grpc_api.server import set_serving
from service.model.store import ModelStore
from tests.conftest import TrainedModel
from tests.service.loopback import LoopbackServer

README = Path(__file__).resolve().parent.parent / "README.md"
GRPCURL = Path(sys.executable).with_name("grpcurl")
README_TARGET = "localhost:50051"
SETTINGS = ServeSettings(
    server=ServerSettings(host="127.0.0.1", port=0),
    decision_log=RecordLogSettings(directory=None),
    outcome_log=RecordLogSettings(directory=None),
)


def readme_grpcurl_commands() -> list[list[str]]:
    """Every grpcurl command in the README's bash blocks, split as a shell would."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for chunk in re.split(r"\n(?=grpcurl )", block.strip()):
            if chunk.startswith("grpcurl "):
                commands.append(shlex.split(chunk))
    return commands


def test_readme_grpcurl_examples_work_as_written(trained_model: TrainedModel):
    """list, Score, ReportOutcome, GetModelInfo and the health check all succeed."""
    commands = readme_grpcurl_commands()
    assert len(commands) == 5
    store = ModelStore(trained_model.registry)
    loaded = store.load_champion()
    engine = FeatureEngine(loaded.manifest.feature_config)
    server = LoopbackServer(SETTINGS, build_scorer(SETTINGS, engine, store))
    outputs: dict[str, str] = {}
    try:
        server.run(set_serving(server.health))
        for command in commands:
            arguments = [server.target if word == README_TARGET else word for word in command]
            result = subprocess.run(
                [str(GRPCURL), *arguments[1:]], capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
            outputs[command[-1]] = result.stdout
    finally:
        server.stop()
    assert "fraud.v1.FraudScoring" in outputs["list"]
    answer = json.loads(outputs["fraud.v1.FraudScoring/Score"])
    assert answer["transaction_id"] == "tx-1"
    assert answer["model_version"] == trained_model.version
    assert answer["decision_source"] == "DECISION_SOURCE_MODEL"
    assert json.loads(outputs["fraud.v1.FraudScoring/ReportOutcome"]) == {}
    assert json.loads(outputs["fraud.v1.FraudScoring/GetModelInfo"])["version"] == (
        trained_model.version
    )
    assert json.loads(outputs["grpc.health.v1.Health/Check"]) == {"status": "SERVING"}
