"""INT8 graphs that stay integer on ONNX Runtime's CPU kernels (issue 28): ConvTranspose rewritten
as 1x1 Conv + DepthToSpace (the same function), MatMul quantized with float outputs, and the
TensorRT scheme left as it was."""

from __future__ import annotations

import dataclasses
from pathlib import Path

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
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops[0] == "Conv" and ops[-1] == "Relu" and not {"ConvTranspose", "DepthToSpace"} & set(ops)
    assert rewritten.graph.node[0].name == "up"  # keep_float and the sensitivity fallback find it
    perms = [list(n.attribute[0].ints) for n in rewritten.graph.node if n.op_type == "Transpose"]
    assert perms == [[0, 2, 3, 1], [0, 1, 3, 2, 4, 5], [0, 3, 1, 2]]  # channels-last in between
    assert all(
        ranges[f"y.d2s_{step}"] == (-1.0, 2.0)
        for step in ("packed", "nhwc", "split", "interleaved", "spread")
    )
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


def _between_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The upsampler with a 1x1 Conv after its Relu (the classifier, float by rule), so that
    the up-sampling itself is not the output's producer and quantizes."""
    rng = np.random.default_rng(9)
    model.graph.initializer.append(
        numpy_helper.from_array(rng.normal(size=(3, 4, 1, 1)).astype(np.float32), "wc")
    )
    model.graph.node.append(helper.make_node("Conv", ["z", "wc"], ["logits"], name="classifier"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, None))
    del model.graph.input[:]  # dynamic height and width, as exports have: no Shape folds away
    model.graph.input.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, "height", "width"]))
    return model


def test_int8_cpu_graph_stays_integer_where_the_tensorrt_graph_is_unchanged(tmp_path: Path) -> None:
    model = _between_convs(_upsampler(2, 2, [0, 0, 0, 0]))
    x = np.random.default_rng(2).normal(size=(1, 6, 5, 7)).astype(np.float32)
    calibration = _calibration(model, x)
    scheme = precision.int8_cpu_scheme("vnni")
    assert "depth-to-space" in scheme.graph_rewrites and scheme.compute_ops == ("Conv", "MatMul")
    rewritten, ranges = cpu_graph.convtranspose_as_depth_to_space(model, calibration.ranges)
    # The rewritten ConvTranspose is not the output's producer here (the classifier is), so it quantizes.
    int8 = precision.to_int8(rewritten, dataclasses.replace(calibration, ranges=ranges), scheme=scheme)
    ops = [n.op_type for n in int8.graph.node]
    assert "ConvTranspose" not in ops
    producer = {o: n for n in int8.graph.node for o in n.output}
    spread = next(n for n in int8.graph.node if n.name == "up.d2s")  # the 6-D Transpose moves uint8
    assert producer[spread.input[0]].op_type == "DequantizeLinear"
    shape = next(n for n in int8.graph.node if n.op_type == "Shape")
    assert producer[shape.input[0]].op_type == "DequantizeLinear"  # what the quantizer writes
    final = cpu_graph.rewrite_qdq(int8, scheme.qdq_rewrites)
    producer = {o: n for n in final.graph.node for o in n.output}
    shape = next(n for n in final.graph.node if n.op_type == "Shape")
    assert producer[shape.input[0]].op_type == "QuantizeLinear"  # the dims of the uint8 tensor
    np.testing.assert_array_equal(_run(final, x), _run(int8, x))
    # What runs: with the Shape gone from its readers, ONNX Runtime drops the DQ/Q pair around
    # the Reshape instead of dequantizing the whole map.
    ran = {
        tag: _optimized(graph, tmp_path / f"{tag}.onnx")
        for tag, graph in (("before", int8), ("after", final))
    }
    dequantized = {
        tag: [n.op_type for n in graph.graph.node].count("DequantizeLinear") for tag, graph in ran.items()
    }
    assert dequantized["after"] < dequantized["before"], dequantized
    options = ort.SessionOptions()
    options.optimized_model_filepath = ""
    session = ort.InferenceSession(int8.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": x})[0].shape == (1, 3, 10, 14)
    tensorrt = precision.INT8_SCHEMES["int8"]
    assert "ConvTranspose" in tensorrt.ops and not tensorrt.graph_rewrites and not tensorrt.float_outputs


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


def _gelu_between_matmuls() -> tuple[onnx.ModelProto, np.ndarray]:
    """MatMul -> GELU as exporters write it (x * 0.5 * (1 + erf(x / sqrt 2))) -> MatMul."""
    rng = np.random.default_rng(4)
    initializers = [
        numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), "root2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Div", ["h", "root2"], ["d"], name="div"),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["a"], name="add"),
        helper.make_node("Mul", ["half", "a"], ["m"], name="mul_half"),
        helper.make_node("Mul", ["h", "m"], ["g"], name="gelu"),
        helper.make_node("MatMul", ["g", "w2"], ["y"], name="fc2"),
        helper.make_node("Relu", ["y"], ["z"], name="out"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model, rng.normal(size=(32, 8)).astype(np.float32)


def _optimized(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider actually runs (its fusions applied)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


def test_gelu_is_fused_before_quantization_so_the_cpu_runs_one_kernel(tmp_path: Path) -> None:
    model, x = _gelu_between_matmuls()
    calibration = _calibration(model, x)
    fused, ranges = cpu_graph.fused_gelu(model, calibration.ranges)
    assert [n.op_type for n in fused.graph.node].count("Gelu") == 1
    assert not {"Erf", "Div"} & {n.op_type for n in fused.graph.node}
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        got.run(None, {"x": x})[0], expected.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5
    )
    scheme = precision.int8_cpu_scheme("vnni")
    assert "fused-gelu" in scheme.graph_rewrites
    with_fusion = precision.to_int8(fused, dataclasses.replace(calibration, ranges=ranges), scheme=scheme)
    without = precision.to_int8(model, calibration, scheme=scheme)
    # Why the rewrite exists: ONNX Runtime's own GELU fusion does not match this form in the
    # Q/DQ graph, which then runs Div, Erf, Add and two Muls per GELU.
    assert "Erf" in {n.op_type for n in _optimized(without, tmp_path / "without.onnx").graph.node}
    ran = {n.op_type for n in _optimized(with_fusion, tmp_path / "with.onnx").graph.node}
    assert "Gelu" in ran and not {"Erf", "Div"} & ran


def _concat_of_two_branches() -> tuple[onnx.ModelProto, np.ndarray]:
    """Two convs with different output ranges, one resized, concatenated and convolved."""
    rng = np.random.default_rng(5)
    initializers = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "wa"),
        numpy_helper.from_array(10 * rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "wb"),
        numpy_helper.from_array(rng.normal(size=(2, 8, 1, 1)).astype(np.float32), "wc"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a"),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_b", strides=[2, 2]),
        helper.make_node("Resize", ["b", "", "scales"], ["b_up"], name="up", mode="linear"),
        helper.make_node("Concat", ["a", "b_up"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "wc"], ["y"], name="fuse"),
        helper.make_node("Relu", ["y"], ["z"], name="out"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model, rng.normal(size=(1, 3, 8, 8)).astype(np.float32)


def _scale_of(model: onnx.ModelProto, tensor: str) -> float:
    """The scale of the QuantizeLinear that quantizes `tensor` in a Q/DQ graph."""
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    return float(initializers[node.input[1]])


def test_concat_inputs_share_the_outputs_scale_on_the_cpu() -> None:
    model, x = _concat_of_two_branches()
    calibration = _calibration(model, x)
    scheme = precision.int8_cpu_scheme("vnni")
    before = precision.to_int8(model, calibration, scheme=scheme)
    assert _scale_of(before, "a") != _scale_of(before, "b")  # the case the rewrite is for
    rewritten, ranges = cpu_graph.rewrite(model, calibration.ranges, scheme.graph_rewrites)
    wide = (
        min(calibration.ranges[n][0] for n in ["a", "b", "b_up", "cat"]),
        max(calibration.ranges[n][1] for n in ["a", "b", "b_up", "cat"]),
    )
    assert all(ranges[name] == wide for name in ("a", "b", "b_up", "cat"))  # b reaches cat through Resize
    after = precision.to_int8(rewritten, dataclasses.replace(calibration, ranges=ranges), scheme=scheme)
    assert _scale_of(after, "a") == _scale_of(after, "b") == _scale_of(after, "cat")
    session = ort.InferenceSession(after.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got, expected = session.run(None, {"x": x})[0], reference.run(None, {"x": x})[0]
    assert np.abs(got - expected).max() <= 0.05 * np.abs(expected).max()


def test_unknown_graph_rewrites_are_refused() -> None:
    model, _ = _concat_of_two_branches()
    with pytest.raises(ValueError, match="unknown graph rewrites"):
        cpu_graph.rewrite(model, {}, ("fold-everything",))


def test_a_concat_that_would_undo_a_folded_relu_keeps_its_scales() -> None:
    model, x = _concat_of_two_branches()
    relu = helper.make_node("Relu", ["a_raw"], ["a"], name="relu_a")
    conv_a = next(n for n in model.graph.node if n.name == "conv_a")
    conv_a.output[0] = "a_raw"
    model.graph.node.insert(1, relu)
    calibration = _calibration(model, x)
    assert calibration.ranges["a"][0] == 0 and calibration.ranges["b_up"][0] < 0
    scheme = precision.int8_cpu_scheme("vnni")
    rewritten, ranges = cpu_graph.rewrite(model, calibration.ranges, scheme.graph_rewrites)
    assert ranges["a"] == calibration.ranges["a"] and ranges["b_up"] == calibration.ranges["b_up"]
    int8 = precision.to_int8(rewritten, dataclasses.replace(calibration, ranges=ranges), scheme=scheme)
    session = ort.InferenceSession(int8.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got, expected = session.run(None, {"x": x})[0], reference.run(None, {"x": x})[0]
    assert np.abs(got - expected).max() <= 0.05 * np.abs(expected).max()


def _linear_layers() -> tuple[onnx.ModelProto, np.ndarray]:
    """Two Linear layers on tokens (MatMul + bias Add, as exporters write nn.Linear on 3-D input),
    the second one's bias first in its Add; and a bias-free MatMul the rewrite must leave alone."""
    rng = np.random.default_rng(6)
    initializers = [
        numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=16).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b2"),
        numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "w3"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="act"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
        helper.make_node("Add", ["b2", "y"], ["yb"], name="fc2_bias"),
        helper.make_node("MatMul", ["yb", "w3"], ["z"], name="head"),
        helper.make_node("Relu", ["z"], ["out"], name="out"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model, rng.normal(size=(1, 32, 8)).astype(np.float32)


def test_a_linear_bias_goes_into_the_integer_matmul_with_the_same_result() -> None:
    model, x = _linear_layers()
    scheme = precision.int8_cpu_scheme("vnni")
    assert "matmul-bias-in-kernel" in scheme.qdq_rewrites
    qdq = precision.to_int8(model, _calibration(model, x), scheme=scheme)
    fused = cpu_graph.rewrite_qdq(qdq, scheme.qdq_rewrites)
    kernels = [n for n in fused.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert sorted(n.input[6] for n in kernels) == ["b1", "b2"]
    assert all(n.domain == cpu_graph.MICROSOFT_DOMAIN for n in kernels)
    ops = [n.op_type for n in fused.graph.node]
    assert "Add" not in ops and ops.count("MatMul") == 1  # the bias-free head stays a MatMul
    assert not any(  # no DequantizeLinear is left without a reader
        n.op_type == "DequantizeLinear" and not any(n.output[0] in m.input for m in fused.graph.node)
        for n in fused.graph.node
    )
    expected = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        got.run(None, {"x": x})[0], expected.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5
    )


def test_unknown_qdq_rewrites_are_refused() -> None:
    model, _ = _linear_layers()
    with pytest.raises(ValueError, match="unknown Q/DQ rewrites"):
        cpu_graph.rewrite_qdq(model, ("fuse-everything",))
