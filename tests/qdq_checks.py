"""Structural checks of INT8 Q/DQ graphs, shared by the export and precision tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from segexport import precision
from segexport.runtime.artifacts import sha256_file


def weight_axis(op_type: str, node: onnx.NodeProto, ndim: int) -> int:
    """The output-channel axis of a weight, as TensorRT wants per-channel scales."""
    if op_type == "Conv":
        return 0
    if op_type == "ConvTranspose":
        return 1
    if op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return ndim - 1  # MatMul: [K, N] weights, one scale per output column


def assert_qdq_well_formed(
    model: onnx.ModelProto, scheme: precision.Int8Scheme = precision.INT8_SCHEMES["int8"]
) -> int:
    """Weights: symmetric per-channel INT8 on the right axis. Activations: INT8 with zero
    point 0 (TensorRT), or UINT8 with any zero point (the CPU scheme). Scales finite, > 0."""
    pairs = precision.qdq_pairs(model)
    assert pairs, "no Q/DQ pairs"
    activation_dtype = "uint8" if scheme.unsigned_activations else "int8"
    for pair in pairs:
        assert pair["dtype"] == ("int8" if pair["is_weight"] else activation_dtype), pair["node"]
        if pair["is_weight"] or not scheme.unsigned_activations:
            assert pair["zero_point_max"] == 0, pair["node"]
        scale = np.asarray(pair["scale"])
        assert np.all(np.isfinite(scale)) and np.all(scale > 0), pair["node"]
        for op_type, index, consumer in pair["consumers"]:
            # Weights always, activations too where the scheme puts Q/DQ only on compute-op inputs.
            assert op_type in scheme.ops or not (pair["is_weight"] or scheme.inputs_only), (
                pair["node"],
                op_type,
            )
            if pair["is_weight"] and index == 1:
                ndim = len(pair["weight_shape"])
                expected = weight_axis(op_type, consumer, ndim)
                channels = pair["weight_shape"][expected]
                assert pair["axis"] % ndim == expected, (pair["node"], op_type, pair["axis"])
                assert scale.size == channels, (pair["node"], scale.size, channels)
    return len(pairs)


def int8_conv_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    """The INT8 convolution weights of a Q/DQ graph (its 4-D INT8 initializers), as int32."""
    return [
        onnx.numpy_helper.to_array(init).astype(np.int32)
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4
    ]


def random_int8(artifact: Path) -> onnx.ModelProto:
    """INT8 of a random-weight artifact, calibrated on random inputs: structure only."""
    path = artifact / "model.onnx"
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    if model.graph.input[0].name == "image":
        batches = [{"image": rng.normal(size=(1, 3, 64, 64)).astype(np.float32)} for _ in range(2)]
    else:
        batches = [
            {
                "roi_features": rng.normal(size=(2, 256, 14, 14)).astype(np.float32),
                "labels": np.array([0, 1], dtype=np.int64),
            }
        ]
    calibration = precision.calibrate(path, batches, "minmax", sha256_file(path), artifact)
    return precision.to_int8(model, calibration)
