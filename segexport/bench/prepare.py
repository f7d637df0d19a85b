"""The artifact `segexport bench` times: `--artifacts` as it is, or a fresh export and quantize
through the stages themselves (seeded random weights when no checkpoint is given).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from segexport.bench.options import BenchRequest, Progress, parse_formats
from segexport.export import ExportRequest, export_onnx
from segexport.export.plan import trained_size as trained_size_of
from segexport.quantize import QuantizeRequest, quantize_artifact
from segexport.weights import resolve_weights
from segexport.zoo import create_model, get_spec


@contextmanager
def prepared_artifact(
    request: BenchRequest, threads: int, say: Progress
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The directory to benchmark: `--artifacts` as it is, or a fresh export + quantize
    (into `--artifacts` when given with `--model`, else a temporary directory)."""
    if request.model is None:
        assert request.artifacts is not None
        yield request.artifacts, {}
        return
    scratch = Path(tempfile.mkdtemp(prefix="segexport-bench-"))
    directory = request.artifacts or scratch / "artifact"
    try:
        prepared = _prepare(request, directory, scratch, threads, say)
        yield directory, {**prepared, "temporary": request.artifacts is None}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _prepare(
    request: BenchRequest, directory: Path, scratch: Path, threads: int, say: Progress
) -> dict[str, Any]:
    """Export, then the precisions asked for through `segexport quantize` itself."""
    assert request.model is not None
    spec = get_spec(request.model)
    weights: str | Path | None = request.weights
    trained = weights is not None
    if weights is None:  # seeded random weights, saved so that the PyTorch baseline can be rebuilt
        torch.manual_seed(0)
        weights = scratch / f"{spec.name}.random.pt"
        torch.save(create_model(spec.name).state_dict(), weights)
        trained_size = None
        if request.artifacts is not None:
            say(f"note: the random weights {directory} was exported from are not kept")
    else:
        trained_size = trained_size_of(resolve_weights(spec.name, weights))
    height, width = request.size or trained_size or spec.default_size
    described = f"checkpoint {weights}" if trained else "seeded random weights"
    say(f"exporting {spec.name} ({described}) at {height}x{width}")
    clock = time.perf_counter()
    request_ = ExportRequest(
        spec.name, weights=weights, size=(height, width), out_dir=directory, threads=threads
    )
    export_onnx(request_, progress=say)
    seconds = {"export": round(time.perf_counter() - clock, 1)}
    formats = parse_formats(request.formats)
    fp16, int8, int8_cpu = (name in formats for name in ("onnx-fp16", "onnx-int8", "onnx-int8-cpu"))
    if fp16 or int8 or int8_cpu:
        clock = time.perf_counter()
        quantize = QuantizeRequest(
            artifacts=directory,
            fp16=fp16,
            int8=int8,
            int8_cpu=int8_cpu,
            threads=threads,
            eval_images=request.eval_images,
            # Random weights: agreement means nothing, so no sensitivity fallback chases it.
            min_agreement=QuantizeRequest.min_agreement if trained else 0.0,
        )
        quantize_artifact(quantize, progress=say)
        seconds["quantize"] = round(time.perf_counter() - clock, 1)
    return {"trained": trained, "seconds": seconds}
