"""The ONNX allow-list: what a LightGBM export contains passes, anything else is refused."""

from __future__ import annotations

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
