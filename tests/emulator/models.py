"""Small ONNX graphs with dynamic batch/height/width for the runner's tests, and their profile."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 5
PROFILE = {"image": {"min": [1, 3, 8, 8], "opt": [1, 3, 16, 16], "max": [4, 3, 32, 48]}}
RECORD = {"profile": PROFILE}


@dataclass(frozen=True)
class EngineModel:
    name: str
    onnx: bytes
    outputs: tuple[str, ...]
    profile: dict[str, dict[str, list[int]]] = field(default_factory=lambda: PROFILE)


def _model(name: str, nodes: list, outputs: list, weights: list) -> EngineModel:
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
    graph = helper.make_graph(nodes, name, [image], outputs, weights)
    # IR 8 is what opset 18 needs; onnx.helper's default follows the newest onnx (IR 14 with
    # onnx 1.23), which older ONNX Runtime releases refuse (1.30 reads up to IR 13: seen on
    # the H100 machine).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.checker.check_model(model)
    return EngineModel(name, model.SerializeToString(), tuple(o.name for o in outputs))


def conv(logits_type: int = TensorProto.FLOAT) -> EngineModel:
    """A 1x1 convolution to CLASSES logits and their ArgMax as uint8 ids (a 'mask' head)."""
    weight = np.random.default_rng(7).normal(size=(CLASSES, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "weight"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["ids"], axis=1, keepdims=0),
        helper.make_node("Cast", ["ids"], ["mask"], to=TensorProto.UINT8),
        helper.make_node("Cast", ["scores"], ["logits"], to=logits_type),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", logits_type, ["N", CLASSES, "H", "W"]),
        helper.make_tensor_value_info("mask", TensorProto.UINT8, ["N", "H", "W"]),
    ]
    name = "conv" if logits_type == TensorProto.FLOAT else "conv-fp16"
    return _model(name, nodes, outputs, [numpy_helper.from_array(weight, "weight")])


def identity() -> EngineModel:
    """Outputs = inputs: on real CUDA without TensorRT the emulated engine is a device copy."""
    nodes = [helper.make_node("Identity", ["image"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    return _model("identity", nodes, outputs, [])


def conv_frames(height: int = 32, width: int = 48) -> EngineModel:
    """`conv` taking raw uint8 RGB frames [N, H, W, 3], normalised inside (`--input-format
    uint8-nhwc`), with a profile up to `height` x `width`."""
    from segexport.export.graph import take_raw_frames

    framed = take_raw_frames(
        onnx.load_from_string(conv().onnx), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1 / 255
    )
    framed.ir_version = 8
    profile = {"image": {"min": [1, 8, 8, 3], "opt": [1, 16, 16, 3], "max": [4, height, width, 3]}}
    return EngineModel("conv-frames", framed.SerializeToString(), ("logits", "mask"), profile)


MODELS = {
    "conv": conv,
    "conv-fp16": lambda: conv(TensorProto.FLOAT16),
    "identity": identity,
    "conv-frames": conv_frames,
}


def frame(shape: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(seed).normal(size=shape).astype(np.float32)}
