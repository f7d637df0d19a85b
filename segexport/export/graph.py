"""ONNX graph edits after the trace: the mask head, onnxsim, explicit Squeeze axes.

Each takes and returns (or edits) an `onnx.ModelProto` and knows nothing of PyTorch, so the
stage, `retrace` and tests can apply them to any graph. `declared_shapes` reads a graph's
inputs/outputs back for the manifest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from segexport.errors import SegexportError, first_line

# What the graph hands over: class logits, a mask of class ids (ArgMax over classes in the
# graph, so only ids cross from the device: 2 MB instead of 160 MB at 1024x2048 with 19
# classes), or both.
HEADS = ("logits", "mask", "logits+mask")
MASK_OUTPUT = "mask"
MASK_TYPES = {"uint8": (onnx.TensorProto.UINT8, np.uint8), "int32": (onnx.TensorProto.INT32, np.int32)}


def add_mask_head(proto: onnx.ModelProto, logits: str, head: str, mask_dtype: str) -> onnx.ModelProto:
    """ArgMax over the classes of `logits` (axis 1) as a `mask` output of class ids.

    Ties resolve to the first class in ONNX Runtime, TensorRT and torch.argmax alike. With
    `head="mask"` the logits stop being a graph output, so nothing allocates or copies them.
    """
    if head == "logits":
        return proto
    taken = {name for node in proto.graph.node for name in node.output} | {i.name for i in proto.graph.input}
    if MASK_OUTPUT in taken or f"{MASK_OUTPUT}_int64" in taken:
        raise SegexportError(f"the graph already has a tensor named {MASK_OUTPUT}; cannot add a mask head")
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    elem_type = MASK_TYPES[mask_dtype][0]
    ids = f"{MASK_OUTPUT}_int64"
    graph.node.extend(
        [
            onnx.helper.make_node("ArgMax", [logits], [ids], name="mask_head_argmax", axis=1, keepdims=0),
            onnx.helper.make_node("Cast", [ids], [MASK_OUTPUT], name="mask_head_cast", to=elem_type),
        ]
    )
    declared = next(o for o in graph.output if o.name == logits)
    dims = list(declared.type.tensor_type.shape.dim)
    shape = [d.dim_param or d.dim_value for d in (dims[:1] + dims[2:])]
    graph.output.append(onnx.helper.make_tensor_value_info(MASK_OUTPUT, elem_type, shape))
    if head == "mask":
        graph.output.remove(declared)
    return model


def declared_shapes(values: Any) -> list[dict[str, Any]]:
    """Name, element type and symbolic shape of graph inputs/outputs, as JSON."""
    described = []
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
        described.append(
            {
                "name": value.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                "shape": dims,
            }
        )
    return described


# onnxsim's batched MatMul+Add -> Reshape/Gemm/Reshape rewrite adds Shape arithmetic
# around every Linear (SegFormer-B0: 459 -> 601 nodes) and buys TensorRT nothing; it
# also hides the MatMul inputs that INT8 Q/DQ placement targets.
_SKIPPED_SIMPLIFIER_PASSES = ["fuse_matmul_add_bias_into_gemm", "fuse_matmul_add_bias_into_gemm_batched"]


def simplify(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """onnxsim the graph; on failure keep the raw export and return the reason."""
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(proto, skipped_optimizers=_SKIPPED_SIMPLIFIER_PASSES)
    except Exception as error:  # onnxsim wraps C++ errors in generic exceptions
        explicit_squeeze_axes(proto)
        return proto, f"onnxsim failed: {first_line(error)}"
    if not ok:
        explicit_squeeze_axes(proto)
        return proto, "onnxsim's own check failed"
    explicit_squeeze_axes(simplified)
    return simplified, None


def explicit_squeeze_axes(proto: onnx.ModelProto) -> int:
    """Give every Squeeze without an axes input explicit axes; returns how many were fixed.

    TensorRT's parsers infer omitted axes only from fully static input shapes (10.x importer),
    and 11.x announces omitted axes only from 11.5: explicit axes are read by every release.
    Only inputs whose shape inference gives every dim are fixed (the dims equal to 1 are the
    axes); a Squeeze on symbolic dims is left for `segexport check-trt` to report.
    """
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        return 0
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    shapes = {
        v.name: v.type.tensor_type.shape
        for v in [*inferred.value_info, *inferred.input]
        if v.type.tensor_type.HasField("shape")
    }
    shapes.update(
        {
            init.name: onnx.TensorShapeProto(dim=[{"dim_value": d} for d in init.dims])
            for init in proto.graph.initializer
        }
    )
    fixed = 0
    for node in proto.graph.node:
        if node.op_type != "Squeeze" or (len(node.input) > 1 and node.input[1]):
            continue
        shape = shapes.get(node.input[0])
        if shape is None or not all(d.HasField("dim_value") for d in shape.dim):
            continue
        axes = [i for i, d in enumerate(shape.dim) if d.dim_value == 1]
        name = f"{node.name or node.output[0]}_axes"
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(axes, dtype=np.int64), name))
        del node.input[1:]
        node.input.append(name)
        fixed += 1
    return fixed


def take_raw_frames(
    proto: onnx.ModelProto, mean: Any, std: Any, scale: float, input_name: str = "image"
) -> onnx.ModelProto:
    """The graph taking raw RGB frames, uint8 [N, H, W, 3], and normalising inside.

    The prefix repeats `segexport.runtime.preprocess` step by step (Cast, NHWC -> NCHW, * scale,
    - mean, / std, all float32) so that the graph reads the tensor the float artifact read. A
    GPU runner then uploads a quarter of the bytes and the host converts nothing; TensorRT
    takes UINT8 network inputs followed by a Cast.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    declared = next((value for value in graph.input if value.name == input_name), None)
    if declared is None:
        raise SegexportError(f"the graph has no input {input_name!r} to take raw frames")
    dims = list(declared.type.tensor_type.shape.dim)
    if (
        declared.type.tensor_type.elem_type != onnx.TensorProto.FLOAT
        or len(dims) != 4
        or dims[1].dim_value != 3
    ):
        raise SegexportError(
            f"--input-format uint8-nhwc needs a float [N, 3, H, W] input; {input_name!r} is not one"
        )
    inner = f"{input_name}_normalised"
    for node in graph.node:
        node.input[:] = [inner if name == input_name else name for name in node.input]
    constants = {
        f"{input_name}_scale": np.array(scale, dtype=np.float32),
        f"{input_name}_mean": np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1),
        f"{input_name}_std": np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1),
    }
    graph.initializer.extend(onnx.numpy_helper.from_array(value, name) for name, value in constants.items())
    steps: list[tuple[str, list[str], dict[str, Any]]] = [
        ("Cast", [input_name], {"to": onnx.TensorProto.FLOAT}),
        ("Transpose", [], {"perm": [0, 3, 1, 2]}),
        ("Mul", [f"{input_name}_scale"], {}),
        ("Sub", [f"{input_name}_mean"], {}),
        ("Div", [f"{input_name}_std"], {}),
    ]
    prefix: list[onnx.NodeProto] = []
    previous = None
    for index, (op, extra, attributes) in enumerate(steps):
        output = inner if index == len(steps) - 1 else f"{input_name}_frames_{op.lower()}"
        inputs = extra if previous is None else [previous, *extra]
        prefix.append(onnx.helper.make_node(op, inputs, [output], name=f"frames_{op.lower()}", **attributes))
        previous = output
    nodes = [*prefix, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    shape = [d.dim_param or d.dim_value for d in (dims[0], dims[2], dims[3])] + [3]
    frames = onnx.helper.make_tensor_value_info(input_name, onnx.TensorProto.UINT8, shape)
    position = list(graph.input).index(declared)
    graph.input.remove(declared)
    graph.input.insert(position, frames)
    onnx.checker.check_model(model)
    return model
