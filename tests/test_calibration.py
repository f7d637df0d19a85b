"""Percentile calibration on a graph with a nearly constant activation.

numpy cannot cut a range narrower than 2048 float32 steps into 2048 bins; ONNX Runtime's
percentile collector then raised "Too many bins for data range" for the whole model
(random-weight LR-ASPP's squeeze-excite gates). That tensor takes its min/max range and is named.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from segexport.calibration import Calibration, calibrate


def _gated(path: Path) -> None:
    """image -> conv, times sigmoid(image * 1e-6): a gate within some 30 ulps of 0.5."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "weight")
    tiny = numpy_helper.from_array(np.array(1e-6, np.float32), "tiny")
    nodes = [
        helper.make_node("Conv", ["image", "weight"], ["features"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Mul", ["image", "tiny"], ["scaled"], name="scale"),
        helper.make_node("Sigmoid", ["scaled"], ["gate"], name="gate"),
        helper.make_node("ReduceMean", ["gate"], ["gate_mean"], keepdims=1, axes=None, name="pool"),
        helper.make_node("Mul", ["features", "gate_mean"], ["logits"], name="apply"),
    ]
    graph = helper.make_graph(
        nodes,
        "gated",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 16, 16])],
        [weight, tiny],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_a_nearly_constant_tensor_takes_its_minmax_range(tmp_path: Path) -> None:
    path = tmp_path / "gated.onnx"
    _gated(path)
    rng = np.random.default_rng(1)
    batches = [{"image": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(3)]
    calibration = calibrate(path, batches, "percentile", "sha", tmp_path)
    assert "gate" in calibration.minmax_fallback and "logits" not in calibration.minmax_fallback
    low, high = calibration.ranges["gate"]
    assert low == -high and 0.49 < high < 0.51  # symmetric, as minmax would give
    assert set(calibration.ranges) >= {"features", "logits", "gate", "image"}
    calibration.save(tmp_path / "calib.json")
    assert Calibration.load(tmp_path / "calib.json", "sha").minmax_fallback == calibration.minmax_fallback
