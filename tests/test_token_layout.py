"""The `channels-last-tokens` rewrite of the int8-cpu graph (segexport.token_layout): the same
values, and ONNX Runtime's layout Transposes around integer convolutions cancel."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from segexport import cpu_graph, precision
from segexport.token_layout import channels_last_tokens

CHANNELS, HEIGHT, WIDTH = 8, 6, 10


def _mix_ffn(
    shape: list[int], allowzero: int | None = 1, flat_shape: list[int] | None = None, opset: int = 18
) -> onnx.ModelProto:
    """Tokens [1, H*W, C] -> map -> depthwise 3x3 conv -> tokens, written the way exporters
    write `x.transpose(1, 2).reshape(B, C, H, W)` and `x.flatten(2).transpose(1, 2)`."""
    rng = np.random.default_rng(7)
    tokens = HEIGHT * WIDTH
    initializers = [
        numpy_helper.from_array(np.array(shape, np.int64), "map_shape"),
        numpy_helper.from_array(np.array(flat_shape or [1, CHANNELS, tokens], np.int64), "flat_shape"),
        numpy_helper.from_array(rng.normal(size=(CHANNELS, 1, 3, 3)).astype(np.float32), "dw"),
        numpy_helper.from_array(rng.normal(size=(CHANNELS, CHANNELS)).astype(np.float32), "fc"),
    ]
    zero = {} if allowzero is None else {"allowzero": allowzero}  # the attribute exists from opset 14
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], name="to_channels", perm=[0, 2, 1]),
        helper.make_node("Reshape", ["xt", "map_shape"], ["map"], name="to_map", **zero),
        helper.make_node("Conv", ["map", "dw"], ["conv"], name="dwconv", group=CHANNELS, pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["conv", "flat_shape"], ["flat"], name="flatten", **zero),
        helper.make_node("Transpose", ["flat"], ["back"], name="to_tokens", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["back", "fc"], ["y"], name="fc"),
        helper.make_node("Relu", ["y"], ["out"], name="out"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, CHANNELS])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model)  # the declared dims the rewrite reads


def _tokens() -> np.ndarray:
    return np.random.default_rng(8).normal(size=(1, HEIGHT * WIDTH, CHANNELS)).astype(np.float32)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_token_maps_are_written_channels_last_with_the_same_values() -> None:
    model = _mix_ffn([1, CHANNELS, HEIGHT, WIDTH])
    rewritten, ranges = channels_last_tokens(model, {"map": (-1.0, 1.0), "conv": (-2.0, 2.0)})
    onnx.checker.check_model(rewritten)
    assert _ops(rewritten) == ["Reshape", "Transpose", "Conv", "Transpose", "Reshape", "MatMul", "Relu"]
    perms = [list(n.attribute[0].ints) for n in rewritten.graph.node if n.op_type == "Transpose"]
    assert perms == [[0, 3, 1, 2], [0, 2, 3, 1]]
    assert ranges["map.nhwc"] == (-1.0, 1.0) and ranges["conv.nhwc.flatten"] == (-2.0, 2.0)
    x = _tokens()
    np.testing.assert_array_equal(_run(rewritten, x), _run(model, x))


def test_reshapes_that_move_channels_or_copy_dims_are_left_alone() -> None:
    # [1, C, N] -> [1, C/2, 2H, W] mixes channels into space: not a tokens -> map conversion.
    moved = _mix_ffn([1, CHANNELS // 2, 2 * HEIGHT, WIDTH], flat_shape=[1, CHANNELS // 2, -1])
    assert _ops(channels_last_tokens(moved, {})[0]) == _ops(moved)
    # allowzero 0 with a 0 entry copies the input's dim at that index: moved, it would copy another.
    copied = _mix_ffn([0, CHANNELS, HEIGHT, WIDTH], allowzero=0, flat_shape=[0, CHANNELS, -1])
    assert _ops(channels_last_tokens(copied, {})[0]) == _ops(copied)


def test_a_computed_shape_is_permuted_by_one_gather_per_shape() -> None:
    """Dynamic exports compute the target shape (Shape -> Concat); the rewrite gathers it."""
    model = _mix_ffn([1, CHANNELS, HEIGHT, WIDTH])
    graph = model.graph
    constant = next(i for i in graph.initializer if i.name == "map_shape")
    graph.initializer.remove(constant)
    graph.initializer.append(numpy_helper.from_array(np.array([CHANNELS, HEIGHT, WIDTH], np.int64), "chw"))
    graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "zero"))
    graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    computed = [
        helper.make_node("Shape", ["x"], ["x_shape"], name="shape"),
        helper.make_node("Slice", ["x_shape", "zero", "one"], ["batch"], name="batch"),
        helper.make_node("Concat", ["batch", "chw"], ["map_shape"], name="map_shape", axis=0),
    ]
    for index, node in enumerate(computed):
        graph.node.insert(index, node)
    rewritten, _ = channels_last_tokens(model, {})
    onnx.checker.check_model(rewritten)
    assert _ops(rewritten).count("Gather") == 1 and _ops(rewritten).count("Transpose") == 2
    x = _tokens()
    np.testing.assert_array_equal(_run(rewritten, x), _run(model, x))


def _calibration(model: onnx.ModelProto, x: np.ndarray) -> precision.Calibration:
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    names = [o for n in probe.graph.node for o in n.output]
    probe.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names)
    values = dict(zip(names, _run_all(probe, x), strict=True))
    values["x"] = x
    return precision.Calibration(
        "minmax", {k: (float(v.min()), float(v.max())) for k, v in values.items()}, "sha", 1
    )


def _run_all(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[1:]


def _transposes_that_run(model: onnx.ModelProto, path: Path) -> int:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _ops(onnx.load(str(path))).count("Transpose")


def test_the_int8_cpu_graph_runs_fewer_layout_transposes(tmp_path: Path) -> None:
    model = _mix_ffn([1, CHANNELS, HEIGHT, WIDTH])
    x = _tokens()
    calibration = _calibration(model, x)
    scheme = precision.int8_cpu_scheme("vnni")
    assert "channels-last-tokens" in scheme.graph_rewrites
    without = precision.to_int8(model, calibration, scheme=scheme)
    rewritten, ranges = cpu_graph.rewrite(model, calibration.ranges, scheme.graph_rewrites)
    with_rewrite = precision.to_int8(
        rewritten, dataclasses.replace(calibration, ranges=ranges), scheme=scheme
    )
    before = _transposes_that_run(without, tmp_path / "without.onnx")
    after = _transposes_that_run(with_rewrite, tmp_path / "with.onnx")
    assert after < before, (before, after)
    np.testing.assert_allclose(
        _run(with_rewrite, x), _run(without, x), rtol=0.05, atol=0.05 * np.abs(_run(model, x)).max()
    )


def test_a_graph_without_declared_dims_is_rewritten_from_inferred_ones() -> None:
    model = _mix_ffn([1, CHANNELS, HEIGHT, WIDTH])
    del model.graph.value_info[:]  # older exporters write none
    rewritten, _ = channels_last_tokens(model, {})
    assert _ops(rewritten) == ["Reshape", "Transpose", "Conv", "Transpose", "Reshape", "MatMul", "Relu"]
    x = _tokens()
    np.testing.assert_array_equal(_run(rewritten, x), _run(model, x))


def test_an_opset_13_graph_stays_valid() -> None:
    """Reshape has no `allowzero` before opset 14: the new Reshapes copy the old ones' attributes."""
    model = _mix_ffn([1, CHANNELS, HEIGHT, WIDTH], allowzero=None, opset=13)
    rewritten, _ = channels_last_tokens(model, {})
    onnx.checker.check_model(rewritten, full_check=True)
    assert _ops(rewritten).count("Transpose") == 2 and _ops(rewritten)[0] == "Reshape"
    assert not any(a.name == "allowzero" for n in rewritten.graph.node for a in n.attribute)
    x = _tokens()
    np.testing.assert_array_equal(_run(rewritten, x), _run(model, x))
