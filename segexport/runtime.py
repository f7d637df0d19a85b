"""The deployable runtime: runs artifacts with numpy and ONNX Runtime only (no torch import).

Every backend is a `Runner`: named numpy inputs in, named numpy outputs out. The
verification stage compares runners; robotics and video pipelines use them directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from segexport.artifacts import read_manifest, vouched_path
from segexport.errors import SegexportError, first_line


class Runner(Protocol):
    """One backend that maps named inputs to named outputs."""

    name: str

    @property
    def output_names(self) -> list[str]: ...

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def preprocess(
    images: np.ndarray, mean: Sequence[float], std: Sequence[float], scale: float = 1 / 255
) -> np.ndarray:
    """RGB uint8 [H, W, 3] or [N, H, W, 3] -> normalised float32 [N, 3, H, W].

    The one preprocessing used by training, calibration, evaluation and deployment, so
    that every stage sees the tensors the others saw.
    """
    batch = images[None] if images.ndim == 3 else images
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise SegexportError(f"expected RGB images [N, H, W, 3], got shape {tuple(images.shape)}")
    mean_array = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std_array = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    chw = batch.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(scale)
    return np.ascontiguousarray((chw - mean_array) / std_array)


class OnnxRuntimeRunner:
    """An ONNX Runtime session on the CPU unless providers say otherwise."""

    def __init__(
        self,
        model_path: Path,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=list(providers)
            )
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/... types
            raise SegexportError(
                f"{model_path}: ONNX Runtime cannot load it ({first_line(error)})"
            ) from error
        self.name = f"onnxruntime:{Path(model_path).name}"

    @property
    def input_names(self) -> list[str]:
        return [node.name for node in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [node.name for node in self.session.get_outputs()]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, feeds)
        return dict(zip(self.output_names, (np.asarray(o) for o in outputs), strict=True))


def open_runner(
    directory: Path, file_name: str, manifest: dict[str, Any], threads: int | None = None
) -> Runner:
    """A Runner for any model file an artifact holds, after the manifest vouches for it.

    `.onnx` runs in ONNX Runtime; `.engine` in TensorRT through `segexport.engine`, which
    only machines with TensorRT need (imported here, never at module load).
    """
    suffix = Path(file_name).suffix
    if suffix == ".onnx":
        return OnnxRuntimeRunner(vouched_path(directory, file_name, manifest), threads=threads)
    if suffix == ".engine":
        from segexport.engine import open_engine_runner  # cuda-python/TensorRT: only when asked

        return open_engine_runner(directory, file_name, manifest)
    raise SegexportError(f"{directory / file_name}: no runner for {suffix or 'files without a suffix'}")


def open_artifact(
    directory: Path, file_name: str = "model.onnx", threads: int | None = None
) -> tuple[Runner, dict[str, Any]]:
    """A pipeline's entry point: the artifact's manifest and a runner for one of its files
    (ONNX or engine), loaded only after the manifest vouches for it."""
    manifest = read_manifest(directory)
    return open_runner(directory, file_name, manifest, threads), manifest
