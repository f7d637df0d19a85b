"""The artifact a stage needs, making the missing earlier stages first.

`segexport quantize`, `trt` and `verify` (and `bench`) accept `--model` alone: the artifact
directory is then artifacts/MODEL, exported first when it holds no manifest yet. Where it
sits: above the `onnx` stage (`segexport.export`, which it runs) and below the stages that
need its artifact (`segexport.quantize`, `build`, `verify`); it imports none of those.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from segexport.errors import SegexportError
from segexport.export import ExportRequest, export_onnx
from segexport.runtime.artifacts import MANIFEST
from segexport.zoo.registry import get_spec

Progress = Callable[[str], None]


def artifact_directory(
    directory: Path | None, model: str | None, weights: str | None, progress: Progress
) -> Path:
    """The artifact directory a later stage works on: `directory`, or artifacts/MODEL, exported
    first (with `weights`) when it holds no manifest yet."""
    if directory is None:
        if model is None:
            raise SegexportError("pass --model NAME or --artifacts DIR")
        directory = Path("artifacts") / get_spec(model).name
    if not (directory / MANIFEST).is_file():
        if model is None:
            raise SegexportError(f"{directory} holds no exported model; pass --model to export it first")
        progress(f"no FP32 artifact in {directory}: exporting {model} first")
        export_onnx(ExportRequest(model, weights=weights, out_dir=directory), progress=progress)
    return directory
