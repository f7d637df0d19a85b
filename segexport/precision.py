"""Reduced precision decided in the ONNX graph, where ONNX Runtime can check it on the CPU.

TensorRT 11 builds strongly typed networks only: FP16 comes from FP16 tensors in the
graph and INT8 from Q/DQ nodes; Jetson's TensorRT 10 builds the same graphs. So this
stage writes `model.fp16.onnx` (FP32 inputs/outputs, overflow-prone ops kept in FP32)
and `model.int8.onnx` (symmetric INT8 Q/DQ on the inputs of compute ops, per-channel
weights, calibrated per-tensor activations). On request it also writes
`model.int8-cpu.onnx`, the scheme ONNX Runtime's x86 kernels are fast with, for
deployments that stay on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto

from segexport.calibration import Calibration, calibrate  # noqa: F401  (precision.calibrate: its old home)
from segexport.errors import SegexportError

# The schemes (where Q/DQ goes, per target) live in int8_schemes; re-exported from their old home.
from segexport.int8_schemes import INT8_SCHEMES as INT8_SCHEMES
from segexport.int8_schemes import QUANTIZED_OPS as QUANTIZED_OPS
from segexport.int8_schemes import Int8Scheme as Int8Scheme
from segexport.int8_schemes import int8_cpu_scheme as int8_cpu_scheme

# Ops that overflow or lose too much in FP16 (platform notes): normalisation statistics,
# softmax over attention scores, exponentials and roots.
FP32_OPS = (
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
)


def to_fp16(model: onnx.ModelProto, keep_fp32_ops: Sequence[str] = FP32_OPS) -> onnx.ModelProto:
    """FP16 weights and activations, FP32 graph inputs/outputs and `keep_fp32_ops`."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(keep_fp32_ops))
    remove_cast_round_trips(converted)
    sort_topologically(converted)
    return converted


def sort_topologically(model: onnx.ModelProto) -> None:
    """Put every node after the producers of its inputs (ONNX requires it; the FP16 converter
    and the QDQ quantizer append the nodes they add at the end). Stable: a graph already in
    order is unchanged."""
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending = list(model.graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise SegexportError(f"graph has a cycle or a missing input near node {pending[0].name!r}")
        ready_ids = {id(n) for n in ready}
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if id(n) not in ready_ids]
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({init.name: init.data_type for init in graph.initializer})
    return types


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def _round_trips(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, list[onnx.NodeProto]]]:
    """Casts whose consumers are all Casts straight back to the original type, with those."""
    types = _element_types(model)
    consumers = _consumers(model)
    outputs = {o.name for o in model.graph.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "Cast" or node.output[0] in outputs:
            continue
        followers = consumers.get(node.output[0], [])
        if followers and all(
            f.op_type == "Cast" and _cast_to(f) == types.get(node.input[0]) and f.output[0] not in outputs
            for f in followers
        ):
            found.append((node, followers))
    return found


def cast_round_trips(model: onnx.ModelProto) -> list[str]:
    """Names of Casts whose only consumers cast straight back (should be none)."""
    return [node.name for node, _ in _round_trips(model)]


def remove_cast_round_trips(model: onnx.ModelProto) -> int:
    """Drop Cast(x -> T) followed only by Casts back to x's type; returns pairs removed.

    The FP16 converter wraps each FP32-kept node in casts, so two adjacent FP32 ops get
    a Cast to FP16 and straight back between them: a precision loss for no gain.
    """
    removed = 0
    while True:  # chains of casts: remove non-overlapping pairs, then look again
        consumers = _consumers(model)
        touched: set[str] = set()
        dropped: set[int] = set()
        for cast, back in _round_trips(model):
            names = {cast.input[0], cast.output[0], *(f.output[0] for f in back)}
            if names & touched:
                continue
            touched |= names
            for follower in back:
                for user in consumers.get(follower.output[0], []):
                    user.input[:] = [cast.input[0] if n == follower.output[0] else n for n in user.input]
                dropped.add(id(follower))
            dropped.add(id(cast))
            removed += 1
        if not dropped:
            return removed
        kept = [n for n in model.graph.node if id(n) not in dropped]
        del model.graph.node[:]
        model.graph.node.extend(kept)


# --------------------------------------------------------------------------- INT8


def output_producers(model: onnx.ModelProto) -> list[str]:
    """Compute nodes whose result reaches a graph output through no other compute node.

    The final classifier stays float: its logits are what argmax reads.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    found: list[str] = []
    stack = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is None or name in seen:
            continue
        seen.add(name)
        if node.op_type in QUANTIZED_OPS:
            found.append(node.name)
            continue
        stack.extend(node.input)
    return found


def to_int8(
    model: onnx.ModelProto,
    calibration: Calibration,
    keep_float: Sequence[str] = (),
    scheme: Int8Scheme = INT8_SCHEMES["int8"],
) -> onnx.ModelProto:
    """Q/DQ on the scheme's compute-op inputs (TensorRT's by default); `keep_float` nodes untouched."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    tensors = TensorsData(
        CalibrationMethod.MinMax,
        {name: (np.float32(low), np.float32(high)) for name, (low, high) in calibration.ranges.items()},
    )
    excluded = sorted({*output_producers(model), *keep_float})
    if scheme.inputs_only:
        excluded = sorted({*excluded, *int8_incapable_convs(model)})
    quantizer = QDQQuantizer(
        onnx.ModelProto.FromString(model.SerializeToString()),
        True,  # per-channel weights
        scheme.reduce_range,
        QuantType.QInt8,  # weights
        QuantType.QUInt8 if scheme.unsigned_activations else QuantType.QInt8,  # activations
        tensors,
        [],
        excluded,
        list(scheme.ops),
        # Bias stays float: TensorRT's Q/DQ types are INT8/INT4/FP8/FP4, not INT32.
        {
            "ActivationSymmetric": not scheme.unsigned_activations,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "ForceQuantizeNoInputCheck": scheme.force_pass_through,
            "OpTypesToExcludeOutputQuantization": list(
                scheme.ops if scheme.inputs_only else scheme.float_outputs
            ),
        },
    )
    quantized = quantizer.quantize_model()
    if scheme.inputs_only:
        quantized_nodes = {n.name for n in model.graph.node if n.op_type in scheme.ops} - set(excluded)
        float_readers_read_float(quantized, quantized_nodes)
    sort_topologically(quantized)
    return quantized


# TensorRT's NvInfer.h (IConvolutionLayer::setNbGroups, every 10.x/11.x release): "When using
# groups in int8 mode, the size of the groups ... must be a multiple of 4 for both input and output."
INT8_GROUP_MULTIPLE = 4


def int8_incapable_convs(model: onnx.ModelProto) -> list[str]:
    """Grouped convolutions (e.g. SegFormer's depthwise 3x3) TensorRT cannot run in INT8."""
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        shape = weights.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type not in ("Conv", "ConvTranspose") or group == 1 or not shape:
            continue
        if node.op_type == "Conv":
            per_group_in, per_group_out = shape[1], shape[0] // group
        else:
            per_group_in, per_group_out = shape[0] // group, shape[1]
        if per_group_in % INT8_GROUP_MULTIPLE or per_group_out % INT8_GROUP_MULTIPLE:
            found.append(node.name)
    return found


def float_readers_read_float(model: onnx.ModelProto, quantized_nodes: set[str]) -> int:
    """Rewire every reader of an activation DequantizeLinear that is not a quantized node back
    to the float tensor the Q/DQ pair came from; drop pairs nobody reads any more.

    ONNX Runtime's quantizer points all readers of a quantized tensor at its DQ, so a residual
    Add or a layer kept float would compute on INT8-rounded values. Returns readers rewired.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    initializers = {init.name for init in model.graph.initializer}
    rewired = 0
    for node in model.graph.node:
        if node.name in quantized_nodes or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for index, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in initializers:
                continue
            quantize = producer.get(dq.input[0])
            if quantize is None or quantize.op_type != "QuantizeLinear":
                continue
            node.input[index] = quantize.input[0]
            rewired += 1
    drop_unread_qdq(model)
    return rewired


def drop_unread_qdq(model: onnx.ModelProto) -> None:
    """Remove Q/DQ nodes nobody reads any more, and the initializers they held."""
    graph_outputs = {o.name for o in model.graph.output}
    while True:
        read = {name for node in model.graph.node for name in node.input} | graph_outputs
        unread = [
            n
            for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            and not any(out in read for out in n.output)
        ]
        if not unread:
            break
        dropped = {id(n) for n in unread}
        kept = [n for n in model.graph.node if id(n) not in dropped]
        del model.graph.node[:]
        model.graph.node.extend(kept)
    read = {name for node in model.graph.node for name in node.input}
    for init in [init for init in model.graph.initializer if init.name not in read]:
        model.graph.initializer.remove(init)


def restore_folded_activations(model: onnx.ModelProto, fp32: onnx.ModelProto) -> int:
    """Put back the Relu/Clip nodes the quantizer folded into their producer's Q.

    The tooling's QDQRemovableActivation drops an activation and lets the producer write its
    output tensor: the Q's range does the clamping. A layer made float again that reads that
    tensor before the Q would skip the activation, so the producer writes its own output again
    and the FP32 activation runs between it and the Q (ONNX Runtime folds it again when it runs).
    Returns how many were put back."""
    present = {node.name for node in model.graph.node}
    producer = {out: node for node in model.graph.node for out in node.output}
    restored = 0
    for activation in fp32.graph.node:
        if activation.op_type not in ("Relu", "Clip") or activation.name in present:
            continue
        writer = producer.get(activation.output[0])
        if writer is None or writer.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        position = list(model.graph.node).index(writer)
        writer.output[list(writer.output).index(activation.output[0])] = activation.input[0]
        model.graph.node.insert(position + 1, activation)
        held = {init.name for init in model.graph.initializer}
        bounds = [i for i in fp32.graph.initializer if i.name in activation.input[1:] and i.name not in held]
        model.graph.initializer.extend(bounds)  # Clip's min/max, if the quantizer dropped them
        restored += 1
    return restored


def with_float_nodes(
    quantized: onnx.ModelProto, fp32: onnx.ModelProto, names: Iterable[str], float_activations: bool = True
) -> onnx.ModelProto:
    """A copy of `quantized` in which the named nodes compute in float again: a fallback
    candidate in milliseconds, where re-running the quantizer takes seconds.

    Weights come back from the FP32 graph; activations too (the tensor before its Q) when
    `float_activations`, which is what `to_int8(keep_float=...)` gives for an `inputs_only`
    scheme. Without it they keep reading the Q/DQ'd tensor, as a kept-float layer does in the
    CPU scheme, whose neighbours quantize their outputs. Q/DQ pairs nobody reads are dropped."""
    model = onnx.ModelProto.FromString(quantized.SerializeToString())
    restore_folded_activations(model, fp32)
    wanted = set(names)
    producer = {out: node for node in model.graph.node for out in node.output}
    initializers = {init.name for init in model.graph.initializer}
    float_inputs = {node.name: list(node.input) for node in fp32.graph.node if node.name in wanted}
    fp32_weights = {init.name: init for init in fp32.graph.initializer}
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        for index, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            if dq.input[0] in initializers:  # a weight: the FP32 graph's own tensor
                original = float_inputs[node.name][index]
                if original not in initializers:
                    model.graph.initializer.append(fp32_weights[original])
                    initializers.add(original)
                node.input[index] = original
            elif (
                float_activations
                and (quantize := producer.get(dq.input[0])) is not None
                and (quantize.op_type == "QuantizeLinear")
            ):
                node.input[index] = quantize.input[0]
    drop_unread_qdq(model)
    return model


def qdq_pair_count(model: onnx.ModelProto) -> int:
    """How many tensors the graph quantizes (one QuantizeLinear each)."""
    return sum(1 for node in model.graph.node if node.op_type == "QuantizeLinear")


def qdq_pairs(model: onnx.ModelProto) -> list[dict[str, object]]:
    """Every DequantizeLinear with its scale/zero point facts and the op it feeds."""
    initializers = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    consumers = _consumers(model)
    pairs = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        scale = initializers.get(node.input[1])
        zero = initializers.get(node.input[2]) if len(node.input) > 2 else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        quantized = initializers.get(node.input[0])
        pairs.append(
            {
                "node": node.name,
                "input": node.input[0],
                "is_weight": quantized is not None,
                "dtype": None if zero is None else str(zero.dtype),
                "zero_point_max": None if zero is None else int(np.abs(zero).max()),
                "scale": scale,
                "axis": axis,
                "weight_shape": None if quantized is None else list(quantized.shape),
                "consumers": [
                    (c.op_type, list(c.input).index(node.output[0]), c)
                    for c in consumers.get(node.output[0], [])
                ],
            }
        )
    return pairs


def elem_type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type)
