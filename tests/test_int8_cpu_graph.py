"""INT8 graphs that stay integer on ONNX Runtime's CPU kernels (issue 28): ConvTranspose rewritten
as 1x1 Conv + DepthToSpace (the same function), MatMul quantized with float outputs, and the
TensorRT scheme left as it was."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from segexport import cpu_graph, precision


def _upsampler(kernel: int, stride: int, pads: list[int]) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(6, 4, kernel, kernel)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b")
    node = helper.make_node(
        "ConvTranspose",
        ["x", "w", "b"],
        ["y"],
        name="up",
        kernel_shape=[kernel] * 2,
        strides=[stride] * 2,
        pads=pads,
    )
    graph = helper.make_graph(
        [node, helper.make_node("Relu", ["y"], ["z"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 5, 7])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 5 * stride, 7 * stride])],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


@pytest.mark.parametrize("block", [2, 3])
def test_stride_sized_convtranspose_becomes_conv_and_depth_to_space(block: int) -> None:
    model = _upsampler(block, block, [0, 0, 0, 0])
    rewritten, ranges = cpu_graph.convtranspose_as_depth_to_space(model, {"y": (-1.0, 2.0)})
    onnx.checker.check_model(rewritten)
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "DepthToSpace", "Relu"]
    assert rewritten.graph.node[0].name == "up"  # keep_float and the sensitivity fallback find it
    assert ranges["y.d2s_packed"] == (-1.0, 2.0)
    x = np.random.default_rng(1).normal(size=(1, 6, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(model, x), rtol=1e-5, atol=1e-5)


def test_overlapping_or_padded_convtranspose_is_left_alone() -> None:
    for model in (_upsampler(3, 2, [0, 0, 0, 0]), _upsampler(2, 2, [1, 1, 1, 1])):
        assert cpu_graph.depth_to_space_candidates(model) == []
        rewritten, _ = cpu_graph.convtranspose_as_depth_to_space(model, {})
        assert [n.op_type for n in rewritten.graph.node] == ["ConvTranspose", "Relu"]


def _calibration(model: onnx.ModelProto, x: np.ndarray) -> precision.Calibration:
    outputs = [o for n in model.graph.node for o in n.output]
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs
    )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(
        zip(["x", *[o.name for o in probe.graph.output]], [x, *session.run(None, {"x": x})], strict=True)
    )
    ranges = {name: (float(v.min()), float(v.max())) for name, v in values.items()}
    return precision.Calibration("minmax", ranges, "sha", 1)


def test_int8_cpu_graph_stays_integer_where_the_tensorrt_graph_is_unchanged() -> None:
    model = _upsampler(2, 2, [0, 0, 0, 0])
    x = np.random.default_rng(2).normal(size=(1, 6, 5, 7)).astype(np.float32)
    calibration = _calibration(model, x)
    scheme = precision.int8_cpu_scheme("vnni")
    assert scheme.depth_to_space and scheme.compute_ops == ("Conv", "MatMul")
    rewritten, ranges = cpu_graph.convtranspose_as_depth_to_space(model, calibration.ranges)
    # The rewritten ConvTranspose is not an output producer here: Relu ends the graph, so it quantizes.
    int8 = precision.to_int8(rewritten, dataclasses.replace(calibration, ranges=ranges), scheme=scheme)
    ops = [n.op_type for n in int8.graph.node]
    assert "ConvTranspose" not in ops and "DepthToSpace" in ops
    options = ort.SessionOptions()
    options.optimized_model_filepath = ""
    session = ort.InferenceSession(int8.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": x})[0].shape == (1, 4, 10, 14)
    tensorrt = precision.INT8_SCHEMES["int8"]
    assert "ConvTranspose" in tensorrt.ops and not tensorrt.depth_to_space and not tensorrt.float_outputs


def test_matmul_is_quantized_with_a_float_output_on_the_cpu() -> None:
    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
            helper.make_node("Softmax", ["y"], ["s"], name="sm", axis=-1),
            helper.make_node("MatMul", ["s", "s2"], ["z"], name="mm2"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [weight, numpy_helper.from_array(rng.normal(size=(8, 3)).astype(np.float32), "s2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    calibration = _calibration(model, rng.normal(size=(4, 16)).astype(np.float32))
    int8 = precision.to_int8(model, calibration, scheme=precision.int8_cpu_scheme("vnni"))
    producer = {o: n for n in int8.graph.node for o in n.output}
    matmul = next(n for n in int8.graph.node if n.name == "mm")
    assert all(producer[name].op_type == "DequantizeLinear" for name in matmul.input)
    softmax = next(n for n in int8.graph.node if n.op_type == "Softmax")
    assert softmax.input[0] == "y"  # reads the MatMul's float output: no QLinearSoftmax
