"""What `segexport bench` takes: the request, the format, backend and scenario names, and the
checks that refuse bad options before any work.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from segexport.errors import SegexportError
from segexport.runtime.artifacts import MANIFEST
from segexport.runtime.files import ENGINE_PRECISIONS, ONNX_FILES, engine_file
from segexport.runtime.outputs import artifact_files

Progress = Callable[[str], None]

PYTORCH = "pytorch"
FORMAT_FILES: dict[str, str | None] = {
    PYTORCH: None,
    **{file.format_name: file.name for file in ONNX_FILES},
    **{engine_file(p).format_name: engine_file(p).name for p in ENGINE_PRECISIONS},
}
# Short command-line names of the runtime's backend table entries.
BACKEND_ALIASES = {
    "ort-cpu": "onnxruntime-cpu",
    "ort-cuda": "onnxruntime-cuda",
    "ort-trt": "onnxruntime-tensorrt",
    "tensorrt": "tensorrt",
}
GPU_BACKENDS = ("ort-cuda", "ort-trt", "tensorrt")
DEFAULT_FORMATS = ("pytorch", "onnx-fp32", "onnx-fp16", "onnx-int8", "onnx-int8-cpu", "engine-*")
SCENARIOS = {  # name -> (headline figure, what a query is)
    "single-stream": ("p90", "one frame per query, batch 1"),
    "multi-stream": ("p99", "a fixed number of frames per query, run as one batch"),
    "offline": ("throughput", "all frames at once: throughput at the best batch tried"),
}
MULTI_STREAM_FRAMES = 4  # MLPerf's edge multi-stream query has 8 samples; halved for small machines
OFFLINE_BATCHES = (1, 4)
DEFAULT_SECONDS = 2.0  # timed seconds per format (and per batch size offline)


@dataclass
class BenchRequest:
    """Everything `segexport bench` takes."""

    artifacts: Path | None = None  # with `model`: export there (it must not exist yet)
    model: str | None = None
    weights: str | None = None  # None: seeded random weights, timed only
    formats: Sequence[str] = DEFAULT_FORMATS
    backends: Sequence[str] = tuple(BACKEND_ALIASES)
    scenario: str = "single-stream"
    size: tuple[int, int] | None = None  # default: the checkpoint's training size
    batches: Sequence[int] | None = None  # default per scenario
    threads: int | None = None  # default: the CPU cores this process may use
    warmup: int = 3
    runs: int | None = None  # a fixed number of timed runs per format ...
    seconds: float | None = None  # ... or a time budget per format [DEFAULT_SECONDS]
    data: str = "synthetic"
    eval_images: int = 8
    profile: bool = False  # a per-op profile of each ONNX Runtime row (bench.profile)
    max_seconds: float | None = None  # a wall-clock budget for all warm-up and timing loops


# Upper bounds of the counts (10**9 meant hours of runs or an allocation failure).
MAX_RUNS = 100_000
MAX_WARMUP = 1_000
MAX_EVAL_IMAGES = 10_000


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """Format names, `engine-*` expanded; unknown names are a user error."""
    items = [item.strip() for item in (text.split(",") if isinstance(text, str) else text) if item.strip()]
    formats: list[str] = []
    for item in items:
        matches = (
            [name for name in FORMAT_FILES if name.startswith(item[:-1])] if item.endswith("*") else [item]
        )
        if not matches or any(name not in FORMAT_FILES for name in matches):
            raise SegexportError(f"unknown format {item!r}; use {', '.join(FORMAT_FILES)} (or engine-*)")
        formats += [name for name in matches if name not in formats]
    if not formats:
        raise SegexportError("--formats names no format")
    return formats


def parse_backends(text: str | Sequence[str]) -> list[str]:
    items = [item.strip() for item in (text.split(",") if isinstance(text, str) else text) if item.strip()]
    unknown = [item for item in items if item not in BACKEND_ALIASES]
    if unknown or not items:
        raise SegexportError(
            f"unknown backend {', '.join(unknown) or '(none)'}; use {', '.join(BACKEND_ALIASES)}"
        )
    return list(dict.fromkeys(items))


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise SegexportError(f"--batch {text!r}: use comma-separated positive integers, e.g. 1,4") from None
    if not batches or min(batches) < 1:
        raise SegexportError(f"--batch {text!r}: use comma-separated positive integers, e.g. 1,4")
    return list(dict.fromkeys(batches))


def check_request(request: BenchRequest) -> None:
    """Refuse bad options before any work."""
    parse_formats(request.formats)
    parse_backends(request.backends)
    if request.scenario not in SCENARIOS:
        raise SegexportError(f"--scenario {request.scenario!r}: use one of {', '.join(SCENARIOS)}")
    if request.runs is not None and request.seconds is not None:
        raise SegexportError("pass --runs or --seconds, not both")
    for value, option, low, high in (
        (request.runs, "--runs", 1, MAX_RUNS),
        (request.threads, "--threads", 1, None),
        (request.warmup, "--warmup", 0, MAX_WARMUP),
        (request.eval_images, "--limit", 1, MAX_EVAL_IMAGES),
    ):
        if value is not None and not (low <= value and (high is None or value <= high)):
            limit = f"{low}..{high}" if high is not None else f">= {low}"
            raise SegexportError(f"{option} must be {limit}, got {value}")
    if request.max_seconds is not None and not (
        math.isfinite(request.max_seconds) and request.max_seconds > 0
    ):
        raise SegexportError(f"--max-seconds must be a positive number, got {request.max_seconds}")
    if request.seconds is not None and not (math.isfinite(request.seconds) and request.seconds > 0):
        raise SegexportError(f"--seconds must be a positive number, got {request.seconds}")
    batches = list(request.batches or [])
    if request.scenario == "single-stream" and batches not in ([], [1]):
        raise SegexportError("single-stream runs batch 1; --batch is for multi-stream and offline")
    if request.scenario == "multi-stream" and len(batches) > 1:
        raise SegexportError("multi-stream takes one --batch (the frames per query)")
    if request.model is None and request.artifacts is None:
        raise SegexportError("pass --model NAME or --artifacts DIR")
    if request.model is None and request.weights is not None:
        raise SegexportError("--weights goes with --model (an artifact records its own checkpoint)")
    if request.model is None:
        assert request.artifacts is not None
        if not (request.artifacts / MANIFEST).is_file():
            raise SegexportError(f"--artifacts {request.artifacts}: no {MANIFEST} there (export first)")
    elif request.artifacts is not None and os.path.lexists(request.artifacts):
        raise SegexportError(
            f"--artifacts {request.artifacts} exists; with --model, bench exports into a new directory "
            "(drop --model to benchmark what is there)"
        )
    if request.data != "synthetic" and not Path(request.data).is_dir():
        raise SegexportError(f"--data {request.data!r} is neither 'synthetic' nor a directory")


def bench_reads(request: BenchRequest) -> list[Path | None]:
    """What bench reads: its --report and --plot may be none of these, nor lie inside the data."""
    data = None if request.data == "synthetic" else Path(request.data)
    return [data, *artifact_files(request.artifacts if request.model is None else None)]


def batches_for(request: BenchRequest) -> list[int]:
    if request.batches:
        return list(request.batches)
    return {"single-stream": [1], "multi-stream": [MULTI_STREAM_FRAMES], "offline": list(OFFLINE_BATCHES)}[
        request.scenario
    ]
