"""The readiness rules: one generator per rule over a `Graph` and one release's rules
(`segexport/trt_rules/*.json`), each finding citing its source."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from segexport.readiness.graph import Graph, attr, text

# TensorRT's placement guidance for explicit quantization (developer guide, "Explicit
# Quantization" > "Q/DQ Layer-Placement Recommendations"): quantize all inputs of weighted
# operations; fusion into an INT8 kernel needs both the data and the weights quantized.
PLACEMENT_GUIDE = (
    "TensorRT developer guide, Explicit Quantization, Q/DQ Layer-Placement Recommendations "
    "(docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html)"
)
SHAPE_INFERENCE = "onnx.shape_inference (the TensorRT sources are silent on such graphs)"
WEIGHTED_OPS = {"Conv": 0, "ConvTranspose": 1, "MatMul": -1, "Gemm": None}  # op -> output-channel axis of W
DOC_TYPES: dict[int, str] = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL",
    TensorProto.FLOAT8E4M3FN: "FP8",
    TensorProto.INT4: "INT4",
    TensorProto.FLOAT4E2M1: "FP4",
}


# --------------------------------------------------------------------------- rules
# Each rule yields (rule, severity, node name, message, source); check_model adds the target.

Raw = tuple[str, str, str | None, str, str]
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _opset(graph: Graph, rules: dict[str, Any]) -> Iterator[Raw]:
    low, high = rules["opset"]["min"], rules["opset"]["max"]
    if not low <= graph.opset <= high:
        proxy = rules["docs_version"] != rules["target"]  # another release's list stands in for this one
        why = (
            f" (from TensorRT {rules['docs_version']}'s list; this release's was not available)"
            if proxy
            else ""
        )
        message = f"opset {graph.opset} is outside the parser's opset {low}..{high}{why}"
        yield "opset-range", "uncertain" if proxy else "error", None, message, rules["opset"]["cite"]


def _operators(graph: Graph, rules: dict[str, Any]) -> Iterator[Raw]:
    for node in graph.model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            message = (
                f"{node.domain}::{node.op_type} is outside the operator matrix; only a plugin imports it"
            )
            yield "op-unsupported", "uncertain", node.name, message, rules["opset"]["cite"]
        elif node.op_type in rules["unsupported_ops"]:
            message = f"{node.op_type} is marked unsupported"
            yield "op-unsupported", "error", node.name, message, rules["unsupported_ops"][node.op_type]
        elif node.op_type not in rules["ops"]:
            message = f"{node.op_type} is not in the operator matrix"
            yield "op-unsupported", "error", node.name, message, rules["opset"]["cite"]


def _input_types(graph: Graph, rules: dict[str, Any]) -> Iterator[Raw]:
    for node in graph.model.graph.node:
        entry = rules["ops"].get(node.op_type)
        if entry is None or not entry["types"] or not node.input or node.op_type in _QDQ:
            continue  # Q/DQ types: the qdq-type rule, from NvInfer.h
        elem = graph.elem_type(node.input[0])
        name = DOC_TYPES.get(elem) if elem is not None else None
        if name is not None and name not in entry["types"]:
            message = (
                f"{node.op_type} input {node.input[0]!r} is {name}; supported: {', '.join(entry['types'])}"
            )
            yield "input-type", "error", node.name, message, entry["cite"]


def _constant_inputs(graph: Graph, rules: dict[str, Any]) -> Iterator[Raw]:
    for node in graph.model.graph.node:
        for need in rules["constant_inputs"].get(node.op_type, []):
            index = need["input"]
            if len(node.input) <= index or not node.input[index] or graph.is_constant(node.input[index]):
                continue
            strict = need["wording"].endswith(("an initializer", "a constant tensor"))
            if not strict and graph.foldable(node.input[index]):
                continue  # "resolvable to a constant": computed from constants only
            message = (
                f"{node.op_type} input {need['name']!r} ({node.input[index]!r}) is computed in the graph; "
                f"the matrix says {need['wording']!r}"
            )
            yield "constant-input", "error", node.name, message, need["cite"]


def _squeeze_axes(graph: Graph, rules: dict[str, Any]) -> Iterator[Raw]:
    importer = rules["importer"] or {}
    for node in graph.model.graph.node:
        if node.op_type != "Squeeze" or graph.opset < 13 or (len(node.input) > 1 and node.input[1]):
            continue
        dims = graph.dims(node.input[0])
        static = dims is not None and None not in dims
        if importer.get("squeeze_omitted_axes_static_only"):
            if not static:
                message = "Squeeze without axes on dynamic dims: the importer refuses to infer them"
                yield (
                    "squeeze-implicit-axes",
                    "error",
                    node.name,
                    message,
                    importer["squeeze_omitted_axes_static_only"],
                )
            continue
        row = rules["constant_inputs"].get("Squeeze", [{}])[0]
        message = (
            f"Squeeze without axes: the matrix says {row.get('wording', 'nothing')!r}, and this release's "
            "importer source was not available to tell how an omitted input is handled"
        )
        yield (
            "squeeze-implicit-axes",
            "uncertain",
            node.name,
            message,
            row.get("cite", rules["opset"]["cite"]),
        )


def _resize(graph: Graph, rules: dict[str, Any]) -> Iterator[Raw]:
    allowed = rules["resize"]
    mapped = (rules["importer"] or {}).get("resize_cubic_mapped")
    for node in graph.model.graph.node:
        if node.op_type != "Resize":
            continue
        settings = {
            "mode": text(attr(node, "mode", "nearest")),
            "coordinate_transformation_mode": text(
                attr(node, "coordinate_transformation_mode", "half_pixel")
            ),
        }
        if settings["mode"] == "nearest":
            settings["nearest_mode"] = text(attr(node, "nearest_mode", "round_prefer_floor"))
        for key, value in settings.items():
            if allowed[key] is None or value in allowed[key]:
                continue
            if key == "mode" and value == "cubic":  # the sources disagree
                where = (
                    f"the importer maps it to kCUBIC ({mapped})"
                    if mapped
                    else "10.1-GA's importer maps it to bicubic; this release's importer was not available"
                )
                message = f"Resize mode 'cubic': the matrix lists {', '.join(allowed['mode'])} only; {where}"
                yield "resize-mode", "uncertain", node.name, message, allowed["cite"]
            else:
                message = f"Resize {key} {value!r} is not supported (supported: {', '.join(allowed[key])})"
                yield "resize-mode", "error", node.name, message, allowed["cite"]
        if attr(node, "antialias", 0) and not allowed["antialias"]:
            yield "resize-mode", "error", node.name, "Resize antialias is not supported", allowed["cite"]


def _qdq(graph: Graph, rules: dict[str, Any]) -> Iterator[Raw]:
    qdq = rules["qdq"]
    for node in graph.model.graph.node:
        if node.op_type not in _QDQ:
            continue
        quantized = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
        elem = graph.elem_type(quantized)
        name = DOC_TYPES.get(elem, TensorProto.DataType.Name(elem)) if elem else None
        if name is not None and name not in qdq["types"]:
            message = f"{node.op_type} on {name}; quantized types: {', '.join(qdq['types'])}"
            yield "qdq-type", "error", node.name, message, qdq["types_cite"]
        if len(node.input) > 2 and node.input[2]:
            zero = graph.constant(node.input[2])
            if zero is None:
                message = "zero point is computed in the graph, not a build-time constant"
                yield (
                    "qdq-zero-point",
                    "error",
                    node.name,
                    message,
                    qdq["zero_point_constant"] or qdq["zero_point_zero"],
                )
            elif np.any(zero.astype(np.float64) != 0):
                message = "zero point is not zero: TensorRT quantizes symmetrically only"
                yield "qdq-zero-point", "error", node.name, message, qdq["zero_point_zero"]
        scale = graph.constant(node.input[1])
        if scale is None and qdq["scale_constant"]:
            message = "scale is computed in the graph, not a build-time constant"
            yield "qdq-scale", "error", node.name, message, qdq["scale_constant"]
        elif scale is None:
            message = (
                "scale is computed in the graph; this release's IQuantizeLayer notes no longer require a "
                "build-time constant, nor say that a computed one works"
            )
            yield "qdq-scale", "uncertain", node.name, message, qdq["section_cite"]
        elif np.any(scale <= 0):
            message = "scale has non-positive values"
            yield "qdq-scale", "error", node.name, message, qdq["scale_positive"] or qdq["section_cite"]
        if scale is not None and scale.ndim == 1 and scale.size > 1:
            if not graph.is_constant(node.input[0]):
                message = (
                    f"per-channel scale ({scale.size} values) on {node.input[0]!r}, not a constant weight"
                )
                yield "qdq-per-channel", "error", node.name, message, qdq["per_channel_weights_only"]
            elif node.op_type == "DequantizeLinear":
                yield from _channel_axis(graph, node, qdq)


def _channel_axis(graph: Graph, dq: onnx.NodeProto, qdq: dict[str, Any]) -> Iterator[Raw]:
    """Per-channel weights should be scaled along the consumer's output-channel axis."""
    rank = max(len(graph.dims(dq.input[0]) or []), 1)
    axis = attr(dq, "axis", 1) % rank
    for consumer in graph.model.graph.node:
        if dq.output[0] not in consumer.input[1:2] or consumer.op_type not in WEIGHTED_OPS:
            continue
        wanted = WEIGHTED_OPS[consumer.op_type]
        if wanted is None:  # Gemm: B is [K, N], or [N, K] when transB
            wanted = 0 if attr(consumer, "transB", 0) else 1
        if axis != wanted % rank:
            message = (
                f"per-channel weight scale on axis {axis}, but {consumer.op_type} {consumer.name!r} has its "
                f"output channels on axis {wanted % rank}; the header shows only the output-channel example"
            )
            yield "qdq-per-channel", "uncertain", dq.name, message, qdq["per_channel_weights_only"]


def _uint8(graph: Graph, rules: dict[str, Any]) -> Iterator[Raw]:
    boundary = {*graph.inputs, *graph.outputs}
    for node in graph.model.graph.node:
        for name in node.output:
            if name not in boundary and graph.elem_type(name) == TensorProto.UINT8:
                message = f"{name!r} is UINT8 inside the network; UINT8 is for network inputs/outputs only"
                yield "uint8-internal", "error", node.name, message, rules["uint8_io_only"]


def _ranks(graph: Graph, rules: dict[str, Any]) -> Iterator[Raw]:
    for name in graph.inputs:
        if name not in graph.initializers and graph.dims(name) is None:
            message = f"graph input {name!r} has no shape: TensorRT's addInput needs its dimensions"
            yield "unknown-rank", "error", None, message, rules["add_input_cite"]
    for node in graph.model.graph.node:
        for name in node.output:
            if name and graph.dims(name) is None:
                message = (
                    f"ONNX shape inference cannot tell the rank of {name!r}; TensorRT's parser must, "
                    "when it defines the network"
                )
                yield "unknown-rank", "uncertain", node.name, message, SHAPE_INFERENCE


def _int8_fusion(graph: Graph, rules: dict[str, Any]) -> Iterator[Raw]:
    """INT8 patterns TensorRT cannot run as the graph intends (slow, not rejected)."""
    multiple, cite = rules["qdq"]["int8_group_multiple"], rules["qdq"]["int8_group_cite"]
    for node in graph.model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        data_q = graph.dequantized(node.input[0]) is not None
        weight_q = graph.dequantized(node.input[1]) is not None
        if data_q != weight_q:
            message = (
                f"{node.op_type} has Q/DQ on its {'weights' if weight_q else 'data input'} only: it cannot "
                "run as an INT8 kernel, the dequantized tensor is computed in float"
            )
            yield "qdq-unfusable", "slow", node.name, message, PLACEMENT_GUIDE
        group = attr(node, "group", 1)
        weight = graph.dims(node.input[1])
        if (
            node.op_type not in ("Conv", "ConvTranspose")
            or group == 1
            or not (data_q or weight_q)
            or not weight
        ):
            continue
        per_group = weight[1] if node.op_type == "Conv" else (weight[0] or 0) // group
        out_per_group = (weight[0] or 0) // group if node.op_type == "Conv" else weight[1]
        if (per_group or 0) % multiple or (out_per_group or 0) % multiple:
            message = (
                f"INT8 grouped {node.op_type} with {per_group} input / {out_per_group} output channels per "
                f"group (needs a multiple of {multiple}): likely runs in float between standalone "
                "Q/DQ layers, or fails to build; only a real build can tell"
            )
            yield "qdq-grouped-conv", "slow", node.name, message, cite


CHECKS: tuple[Callable[[Graph, dict[str, Any]], Iterator[Raw]], ...] = (
    _opset,
    _operators,
    _input_types,
    _constant_inputs,
    _squeeze_axes,
    _resize,
    _qdq,
    _uint8,
    _ranks,
    _int8_fusion,
)
