"""The deployable half of segexport: what a Jetson or a robot needs to run an artifact.

It imports numpy, Pillow and its backends (ONNX Runtime; TensorRT and cuda-python when
asked for an engine), never torch or a toolchain module, so that `pip install segexport`
without the `export` extra runs masks. `tests/test_layout.py` keeps it that way.
"""

from segexport.runtime.geometry import logits_to_mask, resize_logits
from segexport.runtime.media import colorize, overlay
from segexport.runtime.preprocessing import preprocess, preprocess_for, read_rgb, resize
from segexport.runtime.runners import OnnxRuntimeRunner, Runner, open_artifact, open_runner
from segexport.runtime.segmenter import TTA, Mask, Segmenter

__all__ = [
    "TTA",
    "Mask",
    "OnnxRuntimeRunner",
    "Runner",
    "Segmenter",
    "colorize",
    "logits_to_mask",
    "open_artifact",
    "open_runner",
    "overlay",
    "preprocess",
    "preprocess_for",
    "read_rgb",
    "resize",
    "resize_logits",
]
