"""Rewrites of the FP32 graph that let ONNX Runtime's CPU kernels keep the `int8-cpu` graph integer.

Hand-written, because ONNX Runtime's quantization tooling places Q/DQ around a ConvTranspose
but its CPU provider has no integer ConvTranspose kernel: the pair is run as DequantizeLinear ->
float ConvTranspose -> QuantizeLinear, a float island that also forces layout changes between
the NHWC integer convolutions around it (the profile of unet-small: ConvTranspose 12 %,
DequantizeLinear 12 %, Transpose 10 %). A ConvTranspose whose kernel equals its stride and
that has no padding writes each output pixel from exactly one input pixel, so it is exactly a
1x1 Conv to `stride_h * stride_w * C_out` channels followed by DepthToSpace: the Conv runs as
QLinearConv and ONNX Runtime drops the Q/DQ around DepthToSpace (its uint8 kernel moves bytes).
The TensorRT graph keeps the ConvTranspose: TensorRT runs it in INT8.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

Ranges = dict[str, tuple[float, float]]


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def depth_to_space_candidates(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """ConvTransposes that are exactly a 1x1 Conv and DepthToSpace: 2-D, group 1, kernel equal
    to a square stride, no padding, dilation or output padding, weights in the graph."""
    weights = {init.name for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "ConvTranspose" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        attributes = _attributes(node)
        kernel = list(attributes.get("kernel_shape", []))
        strides = list(attributes.get("strides", []))
        flat = all(not any(attributes.get(name, [])) for name in ("pads", "output_padding"))
        if (
            len(kernel) == 2
            and kernel == strides
            and kernel[0] == kernel[1]
            and attributes.get("group", 1) == 1
            and set(attributes.get("dilations", [1, 1])) == {1}
            and attributes.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
            and "output_shape" not in attributes
            and flat
        ):
            found.append(node)
    return found


def convtranspose_as_depth_to_space(model: onnx.ModelProto, ranges: Ranges) -> tuple[onnx.ModelProto, Ranges]:
    """A copy of `model` with every candidate ConvTranspose replaced by a 1x1 Conv (same node
    name, so `keep_float` and the sensitivity fallback still find it) and a DepthToSpace; the
    calibration ranges gain the Conv's output, which holds the same values as the ConvTranspose's."""
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    ranges = dict(ranges)
    weights = {init.name: init for init in rewritten.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    chosen = {node.name for node in depth_to_space_candidates(rewritten)}
    for node in rewritten.graph.node:
        if node.name not in chosen:
            nodes.append(node)
            continue
        block = int(_attributes(node)["kernel_shape"][0])
        weight = numpy_helper.to_array(weights[node.input[1]])  # [C_in, C_out, k, k]
        c_in, c_out = weight.shape[:2]
        # DepthToSpace "CRD": output channel c, offset (a, b) reads input channel c*k*k + a*k + b.
        conv_weight = weight.transpose(1, 2, 3, 0).reshape(c_out * block * block, c_in, 1, 1)
        inputs = [node.input[0], _add(rewritten, f"{node.name}.d2s_weight", conv_weight)]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(weights[node.input[2]])
            inputs.append(_add(rewritten, f"{node.name}.d2s_bias", np.repeat(bias, block * block)))
        packed = f"{node.output[0]}.d2s_packed"
        nodes.append(onnx.helper.make_node("Conv", inputs, [packed], name=node.name, kernel_shape=[1, 1]))
        nodes.append(
            onnx.helper.make_node(
                "DepthToSpace",
                [packed],
                list(node.output),
                name=f"{node.name}.d2s",
                blocksize=block,
                mode="CRD",
            )
        )
        if node.output[0] in ranges:
            ranges[packed] = ranges[node.output[0]]
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    read = {name for node in rewritten.graph.node for name in node.input}
    for init in [init for init in rewritten.graph.initializer if init.name not in read]:
        rewritten.graph.initializer.remove(init)
    return rewritten, ranges


def _add(model: onnx.ModelProto, name: str, array: np.ndarray) -> str:
    model.graph.initializer.append(
        numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)
    )
    return name
