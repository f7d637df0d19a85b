"""Rewrites of the FP32 graph that let ONNX Runtime's CPU kernels keep the `int8-cpu` graph integer.

Each one is exact or changes only where Q/DQ scales come from; the scheme lists which it takes
(`Int8Scheme.graph_rewrites`, names from `GRAPH_REWRITES`) and `rewrite` applies them in order.
The TensorRT graph takes none of them: TensorRT fuses and runs these patterns itself.

- `depth-to-space` (hand-written: ONNX Runtime's quantization tooling places Q/DQ around a
  ConvTranspose but its CPU provider has no integer ConvTranspose kernel, so the pair ran as
  DequantizeLinear -> float ConvTranspose -> QuantizeLinear, a float island that also forced
  layout changes between the NHWC integer convolutions around it; unet-small's profile:
  ConvTranspose 12 %, DequantizeLinear 12 %, Transpose 10 %). A ConvTranspose whose kernel
  equals its stride and that has no padding writes each output pixel from exactly one input
  pixel, so it is exactly a 1x1 Conv to `stride_h * stride_w * C_out` channels followed by a
  depth-to-space: the Conv runs as QLinearConv, and the depth-to-space is written channels-last
  (Transposes and Reshapes on uint8, see `_depth_to_space_channels_last`) so that it sits
  between NHWC convolutions without layout changes (unet-small INT8-CPU, one script: ONNX's
  DepthToSpace 78.4 ms, channels-last 70.9 ms).
- `fused-gelu` (ONNX Runtime's own transformer fusion, `onnxruntime.transformers.FusionGelu`):
  exporters write GELU as Div -> Erf -> Add -> Mul -> Mul, reading its input twice. ONNX
  Runtime 1.32's session-time fusion does not match this form (not even in a float graph), and
  in the Q/DQ graph each reader gets its own DequantizeLinear: five float passes and two
  DequantizeLinear per GELU (segformer-b0's Mix-FFN: 5 ms of 76 at 512x512). Fused before
  quantization, the Gelu reads one DequantizeLinear.
- `channels-last-tokens` (hand-written: a layout fact ONNX Runtime's transpose optimizer cannot
  see through a Reshape). Transformers with convolutions on their tokens (SegFormer's Mix-FFN
  and spatial reduction, PVT, ...) turn [B, N, C] tokens into a [B, C, H, W] map as
  Transpose(0,2,1) -> Reshape and back as Reshape -> Transpose(0,2,1). ONNX Runtime runs its
  integer convolutions in NHWC and wraps each in NCHW<->NHWC Transposes, which then meet the
  model's own Transposes across a Reshape and stay: four layout passes per convolution. As
  Reshape to [B, H, W, C] -> Transpose(0,3,1,2) (and Transpose(0,2,3,1) -> Reshape back), the
  same values, the Transposes meet and cancel (the zoo's SegFormer is written this way:
  segformer-b0 INT8-CPU 96.6 -> 79.8 ms at 512x512).
- `shared-concat-scales`: a Concat whose inputs have different scales runs as QLinearConcat
  re-quantizing every input; with one scale for the inputs and the output it copies bytes
  (segformer-b0's decoder Concat of four 256-channel maps: 75.0 -> 70.6 ms per 512x512 frame,
  agreement unchanged). The inputs' calibration ranges, and those of the data-movement ops
  that carry each input there (which share their input's scale), widen to the union.

Rewrites of the Q/DQ graph itself, applied to the graph the sensitivity fallback chose
(`Int8Scheme.qdq_rewrites`, names from `QDQ_REWRITES`):
- `matmul-bias-in-kernel` (hand-written: ONNX Runtime turns DQ -> MatMul into its
  MatMulIntegerToFloat kernel but leaves the Linear's bias Add after it, a float pass over
  every token; the kernel takes the bias as its seventh input). Written out as that kernel,
  the bias is added while the result is converted: the same values up to float rounding
  (segformer-b0: the same logits bit for bit), and segformer-b0's 34 Linear layers at
  512x512 take 66.1 -> 62.1 ms.
- `shapes-of-quantized-tensors`: a Shape reads the quantized tensor, not its DequantizeLinear.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from segexport import precision
from segexport.token_layout import channels_last_tokens

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
    name, so `keep_float` and the sensitivity fallback still find it) and a depth-to-space
    written channels-last (`_depth_to_space_channels_last`); the calibration ranges gain the
    new tensors, which hold the ConvTranspose's values in another order."""
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
        # Packed channel (a*k + b)*C_out + c holds output channel c at offset (a, b).
        conv_weight = weight.transpose(2, 3, 1, 0).reshape(block * block * c_out, c_in, 1, 1)
        inputs = [node.input[0], _add(rewritten, f"{node.name}.d2s_weight", conv_weight)]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(weights[node.input[2]])
            inputs.append(_add(rewritten, f"{node.name}.d2s_bias", np.tile(bias, block * block)))
        packed = f"{node.output[0]}.d2s_packed"
        nodes.append(onnx.helper.make_node("Conv", inputs, [packed], name=node.name, kernel_shape=[1, 1]))
        spread, tensors = _depth_to_space_channels_last(
            rewritten, node.name, packed, node.output[0], block, c_out
        )
        nodes.extend(spread)
        if node.output[0] in ranges:
            ranges.update(dict.fromkeys([packed, *tensors], ranges[node.output[0]]))
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    read = {name for node in rewritten.graph.node for name in node.input}
    for init in [init for init in rewritten.graph.initializer if init.name not in read]:
        rewritten.graph.initializer.remove(init)
    return rewritten, ranges


def _depth_to_space_channels_last(
    model: onnx.ModelProto, name: str, packed: str, output: str, block: int, channels: int
) -> tuple[list[onnx.NodeProto], list[str]]:
    """Nodes taking `packed` [N, k*k*C, H, W] (channel (a*k + b)*C + c) to `output`
    [N, C, k*H, k*W], and the float tensors they add. Not ONNX's DepthToSpace: ONNX Runtime
    runs that in NCHW only, so between two NHWC integer convolutions it cost a Transpose on
    each side (unet-small: DepthToSpace 15 % and Transpose 10 % of its INT8 time). Written as
    Transpose to NHWC -> Reshape [N, H, W, k, k, C] -> Transpose [N, H, k, W, k, C] -> Reshape
    [N, k*H, k*W, C] -> Transpose to NCHW, the outer Transposes cancel against ONNX Runtime's
    own and the middle one moves whole C-channel pixels."""
    make = onnx.helper.make_node
    nhwc, split, interleaved, spread = (
        f"{output}.d2s_{step}" for step in ("nhwc", "split", "interleaved", "spread")
    )
    shape, batch_rows_cols, scaled, target = (
        f"{output}.d2s_{step}" for step in ("shape", "nhw", "scaled", "target")
    )
    first_three = [
        _add(model, f"{name}.d2s_{end}", [value], np.int64) for end, value in (("from", 0), ("to", 3))
    ]
    nodes = [
        make("Transpose", [packed], [nhwc], name=f"{name}.d2s_nhwc", perm=[0, 2, 3, 1]),
        make(
            "Reshape",
            [nhwc, _add(model, f"{name}.d2s_split", [0, 0, 0, block, block, channels], np.int64)],
            [split],
            name=f"{name}.d2s_split",
        ),
        make("Transpose", [split], [interleaved], name=f"{name}.d2s", perm=[0, 1, 3, 2, 4, 5]),
        make("Shape", [nhwc], [shape], name=f"{name}.d2s_shape"),  # Slice, not Shape's `end`: opset < 15 too
        make("Slice", [shape, *first_three], [batch_rows_cols], name=f"{name}.d2s_nhw"),
        make(
            "Mul",
            [batch_rows_cols, _add(model, f"{name}.d2s_scale", [1, block, block], np.int64)],
            [scaled],
            name=f"{name}.d2s_scale",
        ),
        make(
            "Concat",
            [scaled, _add(model, f"{name}.d2s_channels", [channels], np.int64)],
            [target],
            name=f"{name}.d2s_target",
            axis=0,
        ),
        make("Reshape", [interleaved, target], [spread], name=f"{name}.d2s_merge"),
        make("Transpose", [spread], [output], name=f"{name}.d2s_nchw", perm=[0, 3, 1, 2]),
    ]
    return nodes, [nhwc, split, interleaved, spread]


def _add(model: onnx.ModelProto, name: str, array: np.ndarray | list[int], dtype: type = np.float32) -> str:
    """A constant of `dtype` (weights float32, shapes int64) added to the graph; its name."""
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), name))
    return name


def fused_gelu(model: onnx.ModelProto, ranges: Ranges) -> tuple[onnx.ModelProto, Ranges]:
    """A copy of `model` with each exported GELU (Div/Mul -> Erf -> Add -> Mul -> Mul) as one
    com.microsoft Gelu; the ranges are unchanged (the Gelu writes the last Mul's tensor)."""
    from onnxruntime.transformers.fusion_gelu import FusionGelu
    from onnxruntime.transformers.onnx_model import OnnxModel

    wrapped = OnnxModel(onnx.ModelProto.FromString(model.SerializeToString()))
    FusionGelu(wrapped).apply()
    wrapped.prune_graph(outputs=[output.name for output in model.graph.output])
    return _import_microsoft_ops(wrapped.model), ranges


MICROSOFT_DOMAIN = "com.microsoft"


def _import_microsoft_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the com.microsoft opset imported where a node of that domain needs it."""
    uses = any(node.domain == MICROSOFT_DOMAIN for node in model.graph.node)
    if uses and not any(opset.domain == MICROSOFT_DOMAIN for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MICROSOFT_DOMAIN, 1))
    return model


# Ops that move or resample values without changing their range, and whose output the
# quantizer gives its input's scale: a Concat input reached through them shares that scale.
SCALE_CARRIERS = frozenset(
    {
        "Resize",
        "Transpose",
        "Reshape",
        "MaxPool",
        "DepthToSpace",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Identity",
    }
)


def shared_concat_ranges(model: onnx.ModelProto, ranges: Ranges) -> tuple[onnx.ModelProto, Ranges]:
    """The ranges with every calibrated Concat's inputs, output and the tensors that carry each
    input from its producer (through `SCALE_CARRIERS`) widened to their union; the graph as is.
    A Concat stays as it was where the union would undo a folded Relu or Clip."""
    producer = {output: node for node in model.graph.node for output in node.output}
    ranges = dict(ranges)
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type != "Concat" or node.output[0] not in ranges or not all(n in ranges for n in inputs):
            continue
        group = {node.output[0]}
        for name in inputs:
            while name in ranges and name not in group:
                group.add(name)
                upstream = producer.get(name)
                if upstream is None or upstream.op_type not in SCALE_CARRIERS:
                    break
                name = upstream.input[0]
        low = min(ranges[name][0] for name in group)
        high = max(ranges[name][1] for name in group)
        if any(_loses_clamp(producer.get(name), ranges[name], (low, high)) for name in group):
            continue
        ranges.update({name: (low, high) for name in group})
    return model, ranges


def _loses_clamp(node: onnx.NodeProto | None, own: tuple[float, float], union: tuple[float, float]) -> bool:
    """Whether widening a Relu's or Clip's output to `union` would drop the clamp: the scheme
    folds those activations into the producer's Q, whose range then is the only clamp left
    (a UNet's skip Concat of a Relu map and a signed upsampled map broke agreement to 47 %)."""
    if node is None or node.op_type not in ("Relu", "Clip"):
        return False
    return union[0] < own[0] or (node.op_type == "Clip" and union[1] > own[1])


Rewrite = Callable[[onnx.ModelProto, Ranges], tuple[onnx.ModelProto, Ranges]]

# One table: the rewrites a scheme may name, in the order `rewrite` applies them.
GRAPH_REWRITES: dict[str, Rewrite] = {
    "depth-to-space": convtranspose_as_depth_to_space,
    "channels-last-tokens": channels_last_tokens,
    "fused-gelu": fused_gelu,
    "shared-concat-scales": shared_concat_ranges,
}


def rewrite(model: onnx.ModelProto, ranges: Ranges, names: tuple[str, ...]) -> tuple[onnx.ModelProto, Ranges]:
    """`model` and its calibration ranges after the named rewrites, in `GRAPH_REWRITES` order."""
    _refuse_unknown(names, GRAPH_REWRITES, "graph rewrites")
    for name, apply in GRAPH_REWRITES.items():
        if name in names:
            model, ranges = apply(model, ranges)
    return model, ranges


def _initializer_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _bias_of(add: onnx.NodeProto, product: str, arrays: dict[str, np.ndarray], columns: int) -> str | None:
    """The Add's other input when it is a constant [columns] vector, else None."""
    others = [name for name in add.input if name != product]
    if len(others) != 1 or others[0] not in arrays:
        return None
    return others[0] if arrays[others[0]].shape == (columns,) else None


def matmul_bias_in_kernel(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the Q/DQ `model` with each DQ(activation) x DQ(constant 2-D weight) -> MatMul ->
    Add(constant bias) written as one com.microsoft MatMulIntegerToFloat with its bias input.
    Only per-tensor activation scales and per-tensor or per-column weight scales qualify (what
    the kernel takes); Q/DQ nodes left unread are dropped (`precision.drop_unread_qdq`)."""
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    graph = rewritten.graph
    arrays = _initializer_arrays(rewritten)
    producer = {output: node for node in graph.node for output in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    replaced: dict[int, onnx.NodeProto] = {}  # id(Add) -> the fused node taking its place
    dropped: set[int] = set()
    for node in graph.node:
        if node.op_type != "MatMul" or len(readers.get(node.output[0], [])) != 1:
            continue
        add = readers[node.output[0]][0]
        activation, weight = (producer.get(name) for name in node.input)
        if add.op_type != "Add" or activation is None or weight is None:
            continue
        if activation.op_type != "DequantizeLinear" or weight.op_type != "DequantizeLinear":
            continue
        quantized_weight = arrays.get(weight.input[0])
        if quantized_weight is None or quantized_weight.ndim != 2:
            continue
        columns = quantized_weight.shape[1]
        weight_scale = arrays.get(weight.input[1])
        activation_scale = arrays.get(activation.input[1])
        bias = _bias_of(add, node.output[0], arrays, columns)
        if (
            bias is None
            or weight_scale is None
            or activation_scale is None
            or activation_scale.size != 1
            or weight_scale.shape not in ((), (1,), (columns,))
            or _attributes(weight).get("axis", 1) not in (1, -1)
        ):
            continue
        zero = [
            activation.input[2] if len(activation.input) > 2 else "",
            weight.input[2] if len(weight.input) > 2 else "",
        ]
        replaced[id(add)] = onnx.helper.make_node(
            "MatMulIntegerToFloat",
            [activation.input[0], weight.input[0], activation.input[1], weight.input[1], *zero, bias],
            list(add.output),
            name=f"{node.name}.with_bias",
            domain=MICROSOFT_DOMAIN,
        )
        dropped.add(id(node))
    if not replaced:
        return rewritten
    nodes = [replaced.get(id(node), node) for node in graph.node if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    precision.drop_unread_qdq(rewritten)
    return _import_microsoft_ops(rewritten)


def shapes_of_quantized_tensors(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the Q/DQ `model` whose Shape nodes read the quantized tensor instead of its
    DequantizeLinear (the same shape), and without the Q/DQ nodes left unread.
    The quantizer hands every reader of a quantized tensor the DQ output; a DQ read by a Shape
    as well as by a data-movement op is one ONNX Runtime cannot drop, so it dequantized the
    whole map to give the Shape its dims (unet-small's channels-last depth-to-space: four
    full-resolution DequantizeLinear, 4.0 -> 1.3 ms of DequantizeLinear per run)."""
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    producer = {output: node for node in rewritten.graph.node for output in node.output}
    for node in rewritten.graph.node:
        source = producer.get(node.input[0]) if node.op_type == "Shape" else None
        if source is not None and source.op_type == "DequantizeLinear":
            node.input[0] = source.input[0]
    precision.drop_unread_qdq(rewritten)
    return rewritten


# The rewrites of the Q/DQ graph a scheme may name (`rewrite_qdq` applies them in this order).
QDQ_REWRITES: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "matmul-bias-in-kernel": matmul_bias_in_kernel,
    "shapes-of-quantized-tensors": shapes_of_quantized_tensors,
}


def rewrite_qdq(model: onnx.ModelProto, names: tuple[str, ...]) -> onnx.ModelProto:
    """The Q/DQ `model` after the named rewrites, in `QDQ_REWRITES` order."""
    _refuse_unknown(names, QDQ_REWRITES, "Q/DQ rewrites")
    for name, apply in QDQ_REWRITES.items():
        if name in names:
            model = apply(model)
    return model


def _refuse_unknown(names: tuple[str, ...], table: dict[str, Any], what: str) -> None:
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {sorted(table)}")
