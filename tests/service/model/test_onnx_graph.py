"""The ONNX allow-list: what a LightGBM export contains passes, anything else is refused."""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto, helper

from service.model.artifact import ONNX_MODEL_FILE
from service.model.onnx_graph import GraphRefused, check_graph
from service.model.registry import Registry
from tests.conftest import TrainedModel


def _model(
    nodes: list[onnx.NodeProto],
    *,
    initializers: list[TensorProto] | None = None,
    domains: tuple[tuple[str, int], ...] = (("", 13),),
    functions: list[onnx.FunctionProto] | None = None,
) -> bytes:
    graph = helper.make_graph(
        nodes,
        "graph",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        initializer=initializers or [],
    )
    opsets = [helper.make_opsetid(domain, version) for domain, version in domains]
    model = helper.make_model(graph, opset_imports=opsets, functions=functions or [])
    serialized: bytes = model.SerializeToString()
    return serialized


def _refusal(model: bytes) -> GraphRefused:
    with pytest.raises(GraphRefused) as refused:
        check_graph(model)
    return refused.value


def test_the_trained_models_export_passes(trained_model: TrainedModel) -> None:
    """The graph training exports is what the allow-list was written for."""
    artifact = Registry(trained_model.registry).artifact_dir(trained_model.version)
    check_graph((artifact / ONNX_MODEL_FILE).read_bytes())


def test_an_element_wise_graph_passes() -> None:
    check_graph(_model([helper.make_node("Identity", ["features"], ["probabilities"])]))


def test_an_operator_outside_the_list_is_named() -> None:
    refused = _refusal(_model([helper.make_node("Exp", ["features"], ["probabilities"], "e")]))
    assert refused.reason == "onnx_not_allowed"
    assert "node 'e' runs ai.onnx.Exp" in str(refused)


def test_a_custom_operator_domain_is_refused() -> None:
    """A custom domain is how a custom-op library would be reached."""
    node = helper.make_node("Evil", ["features"], ["probabilities"], domain="com.example")
    refused = _refusal(_model([node], domains=(("", 13), ("com.example", 1))))
    assert "com.example" in str(refused)
    assert refused.reason == "onnx_not_allowed"


def test_external_data_is_refused() -> None:
    """A tensor stored outside the file would make onnxruntime open a path of the model's
    choosing."""
    weights = helper.make_tensor("weights", TensorProto.FLOAT, [2], [1.0, 2.0])
    weights.data_location = TensorProto.EXTERNAL
    entry = weights.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    node = helper.make_node("Mul", ["features", "weights"], ["probabilities"])
    refused = _refusal(_model([node], initializers=[weights]))
    assert refused.reason == "external_data"


def test_subgraphs_and_functions_are_refused() -> None:
    """Both could hide operators from a look at the top-level nodes."""
    inner = helper.make_graph([], "inner", [], [])
    hiding = helper.make_node("Identity", ["features"], ["probabilities"], name="h")
    hiding.attribute.append(helper.make_attribute("body", inner))
    assert "holds a subgraph" in str(_refusal(_model([hiding])))
    function = helper.make_function("local", "f", ["x"], ["y"], [], [helper.make_opsetid("", 13)])
    identity = helper.make_node("Identity", ["features"], ["probabilities"])
    assert "local functions" in str(_refusal(_model([identity], functions=[function])))


def test_bytes_that_are_no_model_are_invalid_onnx() -> None:
    assert _refusal(b"\xff" * 64).reason == "invalid_onnx"


_SERVER_IMPORTS = """
import sys
import service.__main__
from service.model.onnx_graph import check_graph
check_graph(open(sys.argv[1], "rb").read())
print(",".join(sorted(name for name in ("onnx", "ml_dtypes") if name in sys.modules)))
import subprocess
import sys

import onnx
from service.model import onnx_graph
assert onnx.ModelProto is onnx_graph._ONNX.ModelProto, "two classes for one message"
"""


def test_the_server_checks_a_graph_without_importing_the_onnx_package(
    trained_model: TrainedModel,
):
    """`import onnx` costs a server start 1.3-1.6 s (of some 3) on the 2-core box: the
    check reads onnx's generated messages alone, and `onnx` imported after still works."""
    artifact = Registry(trained_model.registry).artifact_dir(trained_model.version)
    result = subprocess.run(
        [sys.executable, "-c", _SERVER_IMPORTS, str(artifact / ONNX_MODEL_FILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
