"""The one table of the model files an artifact holds.

Each file's name, format, the precision it is judged at, whether TensorRT reads it, how ONNX
Runtime must run it, and the command that makes it. Every stage, the runtime, bench, Triton
and readiness look names up here, so adding a precision is adding one row (before this
table the names were spelled in eight modules and could drift apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
# Not a model file: PyTorch's outputs recorded at export (`segexport.runtime.recorded`), the
# reference every model file is judged against where PyTorch is not installed.
REFERENCE_FILE = "reference.npz"


@dataclass(frozen=True)
class ModelFile:
    """One kind of model file in an artifact directory."""

    name: str
    format: str  # "onnx" or "engine"
    # The precision it is judged at (the CPU's INT8 graph is a variant of int8).
    precision: str
    # `fp32`, `fp16`, `int8`, `int8-cpu`: the name bench and verify give it after its format.
    variant: str
    # Whether TensorRT's ONNX parser is meant to read it (readiness checks only these).
    for_tensorrt: bool
    # ONNX Runtime runs its Q/DQ with TensorRT's arithmetic (emulated, the same on every CPU):
    # TensorRT's INT8 graph is only ever checked on ONNX Runtime, never deployed there.
    emulate_qdq: bool
    made_by: str

    @property
    def format_name(self) -> str:
        """bench's and Triton's name for it: `onnx-fp16`, `engine-int8`."""
        return f"{self.format}-{self.variant}"


ONNX_FILES: tuple[ModelFile, ...] = (
    ModelFile("model.onnx", "onnx", "fp32", "fp32", True, False, "segexport onnx"),
    ModelFile("model.fp16.onnx", "onnx", "fp16", "fp16", True, False, "segexport quantize --fp16"),
    ModelFile("model.int8.onnx", "onnx", "int8", "int8", True, True, "segexport quantize --int8"),
    ModelFile(
        "model.int8-cpu.onnx", "onnx", "int8", "int8-cpu", False, False, "segexport quantize --int8-cpu"
    ),
)
_BY_NAME = {file.name: file for file in ONNX_FILES}
_BY_VARIANT = {file.variant: file for file in ONNX_FILES}
FP32_ONNX = _BY_VARIANT["fp32"].name
TENSORRT_INT8_ONNX = _BY_VARIANT["int8"].name
CPU_INT8_ONNX = _BY_VARIANT["int8-cpu"].name


def engine_file(precision: str) -> ModelFile:
    """The engine `segexport trt` builds at that precision."""
    return ModelFile(
        f"model.{precision}.engine",
        "engine",
        precision,
        precision,
        False,
        False,
        f"segexport trt {precision}",
    )


def engine_file_name(precision: str) -> str:
    """The name `segexport trt` gives an engine of that precision."""
    return engine_file(precision).name


def onnx_file_name(variant: str) -> str:
    """`fp32` -> model.onnx, `int8` -> TensorRT's Q/DQ graph, `int8-cpu` -> the CPU's."""
    return _BY_VARIANT[variant].name


def cpu_onnx_file_name(precision: str) -> str:
    """On the CPU, INT8 means the graph quantized for ONNX Runtime's x86 kernels: TensorRT's
    would run there only through its Q/DQ emulation, slower than FP32."""
    return CPU_INT8_ONNX if precision == "int8" else onnx_file_name(precision)


def model_file(name: str) -> ModelFile | None:
    """The table row of a file name (engines of any precision), or None for other files."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    engine = next((p for p in ENGINE_PRECISIONS if name == engine_file_name(p)), None)
    return None if engine is None else engine_file(engine)


def judged_precision(file_name: str) -> str | None:
    """fp32/fp16/int8 for ONNX files, `engine` for engines, None for other files.

    Names outside the table are read by their tags (`x.fp16.onnx` is FP16), so a user's
    renamed copy is judged by what its name says.
    """
    path = Path(file_name)
    if path.suffix == ".engine":
        return "engine"
    if path.suffix != ".onnx":
        return None
    known = _BY_NAME.get(path.name)
    if known is not None:
        return known.precision
    tags = path.name.split(".")[1:-1]
    return next((p for p in ("fp16", "int8") if any(t.split("-")[0] == p for t in tags)), "fp32")


def emulates_tensorrt_qdq(file_name: str) -> bool:
    """Whether ONNX Runtime runs this file's Q/DQ with TensorRT's arithmetic."""
    known = _BY_NAME.get(Path(file_name).name)
    return known is not None and known.emulate_qdq
