"""The ONNX graph as the readiness rules read it: shapes and types after shape inference,
constants, producers, and node attributes."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


class Graph:
    """The facts every rule reads: shapes and types after inference, constants, producers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        inferred = onnx.shape_inference.infer_shapes(model)
        graph = inferred.graph
        self.values = {v.name: v for v in [*graph.value_info, *graph.output]}
        self.inputs = {v.name: v for v in graph.input}
        self.outputs = {v.name for v in graph.output}
        self.initializers = {init.name: init for init in model.graph.initializer}
        self.constant_nodes = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
        self.producer = {out: node for node in model.graph.node for out in node.output}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def elem_type(self, name: str) -> int | None:
        if name in self.initializers:
            return self.initializers[name].data_type
        value = self.values.get(name) or self.inputs.get(name)
        if value is None or not value.type.tensor_type.elem_type:
            return None
        return value.type.tensor_type.elem_type

    def dims(self, name: str) -> list[int | None] | None:
        """Static dims (None where symbolic); None when the rank is unknown."""
        if name in self.initializers:
            return list(self.initializers[name].dims)
        value = self.values.get(name) or self.inputs.get(name)
        if value is None or not value.type.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.constant_nodes.get(name)
        if node is not None:
            value = next((a for a in node.attribute if a.name == "value"), None)
            return None if value is None else numpy_helper.to_array(value.t)
        return None

    def foldable(self, name: str) -> bool:
        """Computed from constants only (no graph input upstream)."""
        seen: set[str] = set()
        pending = [name]
        while pending:
            tensor = pending.pop()
            if tensor in seen or self.is_constant(tensor):
                continue
            seen.add(tensor)
            node = self.producer.get(tensor)
            if node is None:
                return False
            pending.extend(i for i in node.input if i)
        return True

    def dequantized(self, name: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None


def attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
