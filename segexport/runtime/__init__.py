"""The deployable half of segexport: what a Jetson or a robot needs to run an artifact.

It imports numpy, Pillow and its backends (ONNX Runtime; TensorRT and cuda-python when
asked for an engine), never torch or a toolchain module, so that `pip install segexport`
without the `export` extra runs masks. `tests/test_layout.py` keeps it that way.
"""

from segexport.runtime.preprocessing import preprocess, read_rgb, resize
from segexport.runtime.runners import OnnxRuntimeRunner, Runner, open_artifact, open_runner

__all__ = [
    "OnnxRuntimeRunner",
    "Runner",
    "open_artifact",
    "open_runner",
    "preprocess",
    "read_rgb",
    "resize",
]
