"""What an ONNX graph may contain before onnxruntime is asked to run it.

onnxruntime runs any operator it knows, reads external data files named by relative path,
and a graph's subgraphs and functions can hide either. A LightGBM classifier exported by
`training.model_build.export` needs a tree ensemble and a few element-wise operators, so
anything else is refused here, on the parsed protobuf, before a session is created:

- operators outside `ALLOWED_OPERATORS`, or opset domains outside `ALLOWED_DOMAINS`
  (a custom domain is how custom-op libraries are reached);
- tensors stored as external data (a path the server would open);
- subgraphs (attributes holding graphs), local functions and training information.

The server never registers a custom-op library, so the allow-list is the whole surface.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from onnx.onnx_ml_pb2 import AttributeProto, GraphProto, SparseTensorProto, TensorProto


def _onnx_messages() -> ModuleType:
    """onnx's generated protobuf module, without the `onnx` package around it.

    `import onnx` runs the package's __init__, which imports its helpers and ml_dtypes:
    1.3-1.6 s of CPU on the 2-core box, paid by every server start (of some 3 s), where
    only the message classes are needed. It is registered under a name of its own: `onnx`
    imported later (as training does) runs its copy, whose identical descriptors protobuf's
    pool accepts again, and gives the same message classes."""
    name = "service.model._onnx_ml_pb2"
    loaded = sys.modules.get(name) or sys.modules.get("onnx.onnx_ml_pb2")
    if loaded is not None:
        return loaded
    package = importlib.util.find_spec("onnx")  # finds the package; runs none of it
    if package is None or not package.submodule_search_locations:
        raise ImportError("onnx is not installed")
    path = Path(next(iter(package.submodule_search_locations))) / "onnx_ml_pb2.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


_ONNX: Any = _onnx_messages()

ML_DOMAIN = "ai.onnx.ml"
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", ML_DOMAIN})

# What onnxmltools' LightGBM converter emits for a binary classifier (with and without its
# probability post-processing), and nothing more.
ALLOWED_OPERATORS = frozenset(
    {
        ("", "Identity"),
        ("", "Cast"),
        ("", "Mul"),
        ("", "Add"),
        ("", "Sub"),
        ("", "Div"),
        ("", "Sigmoid"),
        ("", "Reshape"),
        ("", "Concat"),
        ("", "Slice"),
        ("", "Squeeze"),
        ("", "Unsqueeze"),
        ("", "ArgMax"),
        (ML_DOMAIN, "TreeEnsembleClassifier"),
        (ML_DOMAIN, "TreeEnsembleRegressor"),
        (ML_DOMAIN, "ZipMap"),
    }
)


GraphRefusal = Literal["invalid_onnx", "onnx_not_allowed", "external_data"]


class GraphRefused(ValueError):
    """A graph the server will not run; `reason` is the artifact refusal reason it gives."""

    def __init__(self, message: str, *, reason: GraphRefusal = "onnx_not_allowed") -> None:
        super().__init__(message)
        self.reason: GraphRefusal = reason


def check_graph(model_bytes: bytes) -> None:
    """GraphRefused unless the serialized ONNX model holds only what a LightGBM export does."""
    model = _ONNX.ModelProto()
    try:
        model.ParseFromString(model_bytes)
    except Exception as error:  # protobuf's DecodeError, and whatever a hostile file raises
        raise GraphRefused(f"not an ONNX model: {error}", reason="invalid_onnx") from error
    domains = sorted({opset.domain for opset in model.opset_import} - ALLOWED_DOMAINS)
    if domains:
        raise GraphRefused(f"imports operator domains outside the allow-list: {domains}")
    if model.functions:
        raise GraphRefused(f"defines {len(model.functions)} local functions")
    if model.training_info:
        raise GraphRefused("carries training information")
    _check_graph(model.graph)


def _check_graph(graph: GraphProto) -> None:
    for node in graph.node:
        operator = (_domain(node.domain), node.op_type)
        if operator not in ALLOWED_OPERATORS:
            raise GraphRefused(
                f"node {node.name!r} runs {operator[0] or 'ai.onnx'}.{node.op_type}, which a "
                "LightGBM export does not use"
            )
        for attribute in node.attribute:
            if attribute.type in (_ONNX.AttributeProto.GRAPH, _ONNX.AttributeProto.GRAPHS):
                raise GraphRefused(f"node {node.name!r} holds a subgraph")
            _check_tensors(_attribute_tensors(attribute))
    _check_tensors(graph.initializer)
    _check_tensors(_sparse_parts(graph.sparse_initializer))


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _attribute_tensors(attribute: AttributeProto) -> Iterator[TensorProto]:
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors
    if attribute.HasField("sparse_tensor"):
        yield from _sparse_parts([attribute.sparse_tensor])
    yield from _sparse_parts(attribute.sparse_tensors)


def _sparse_parts(tensors: Iterable[SparseTensorProto]) -> Iterator[TensorProto]:
    for tensor in tensors:
        yield tensor.values
        yield tensor.indices


def _check_tensors(tensors: Iterable[TensorProto]) -> None:
    for tensor in tensors:
        if tensor.data_location == _ONNX.TensorProto.EXTERNAL or tensor.external_data:
            raise GraphRefused(
                f"tensor {tensor.name!r} is stored as external data", reason="external_data"
            )
