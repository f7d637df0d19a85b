"""`segexport bench`: every format and backend of one artifact in one table, accuracy beside speed.

Fair by construction: every row gets the same inputs and thread count; each format is
warmed up right after it loads (excluded from the figures); the timed runs interleave
the formats (one run of each, then the next round) so drift on a busy machine hits all
of them alike; PyTorch eager, the baseline, runs in the same process and rounds, and
every ratio is to it. Accuracy goes through the comparator `verify` and `quantize` use
(`quantize.measure`, judged by `compare.default_tolerance`). A row that cannot run
stays in the table as `unavailable`, with the reason.

The scenarios follow MLPerf Inference's edge scenarios, shortened for development
machines (a time budget per format instead of MLPerf's 600 s minimum and query counts):
single-stream (batch 1, headline p90 latency), multi-stream (a fixed number of frames per
query, headline p99) and offline (throughput at the best of the batch sizes tried).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segexport.compare import default_tolerance
from segexport.data import EvaluationImages, SyntheticScenes, evaluation_images
from segexport.errors import SegexportError, first_line
from segexport.export import ExportRequest, export_onnx
from segexport.quantize import QuantizeRequest, evaluation_set, measure, quantize_artifact
from segexport.reference import TorchRunner, data_size, reference_model
from segexport.runtime import Runner, preprocess_for
from segexport.runtime.artifacts import MANIFEST, read_manifest
from segexport.runtime.backends import BACKENDS, Backend
from segexport.runtime.files import ENGINE_PRECISIONS, ONNX_FILES, engine_file
from segexport.runtime.inputs import check_input_shapes
from segexport.weights import resolve_weights
from segexport.zoo import create_model, get_spec

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
MIN_TIMED_RUNS = 5  # a time budget never ends a format before this many runs
HIGH_VARIATION = 0.10  # coefficient of variation above which a row warns (trtexec warns at 1% on GPUs)
PERCENTILES = (50, 90, 95, 99)
BUSY_CORES = 0.25  # CPU (in cores) that other processes may take during the timed runs unwarned
GPU_SPLIT_NOT_MEASURED = (
    "not measured: the runners do not time host-to-device copies, compute and device-to-host "
    "copies separately (trtexec --dumpProfile does)"
)
MEMORY_NOTE = (
    "peak_mem_mb: the most resident memory the format added to the process while it loaded "
    "and ran its warm-up (VmHWM, reset through /proc/self/clear_refs after returning free heap "
    "pages to the OS, minus VmRSS before); memory already resident and reused does not count"
)
MEMORY_FALLBACK_NOTE = (
    "peak_mem_mb: the whole process's peak resident memory so far (getrusage; this kernel "
    "does not let the peak be reset), so later rows include earlier ones"
)


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


@dataclass
class Row:
    """One format on one backend: the status, then figures where it ran."""

    format: str
    backend: str  # as asked (bench's short name; `pytorch` for the baseline)
    status: str  # ok / verify-failed / unavailable
    reason: str | None = None
    file: str | None = None
    backend_used: str | None = None  # what really ran (ONNX Runtime's providers, ...)
    size_mb: float | None = None
    batch: int | None = None
    latency_ms: dict[str, float] | None = None
    runs: int = 0
    throughput_fps: float | None = None
    vs_pytorch: float | None = None  # speed ratio to the baseline (> 1: faster)
    peak_mem_mb: float | None = None
    accuracy: dict[str, Any] | None = None
    gpu_split: dict[str, Any] | None = None
    enqueue_ms: float | None = None
    batches: dict[int, dict[str, float]] = field(default_factory=dict)  # offline: each batch tried
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["batches"] = {str(k): v for k, v in self.batches.items()}
        return data


@dataclass
class BenchResult:
    header: dict[str, Any]
    rows: list[Row]

    def to_dict(self) -> dict[str, Any]:
        return {**self.header, "rows": [row.to_dict() for row in self.rows]}


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
    for value, option in ((request.runs, "--runs"), (request.threads, "--threads")):
        if value is not None and value < 1:
            raise SegexportError(f"{option} must be >= 1, got {value}")
    if request.seconds is not None and not (math.isfinite(request.seconds) and request.seconds > 0):
        raise SegexportError(f"--seconds must be a positive number, got {request.seconds}")
    if request.warmup < 0 or request.eval_images < 1:
        raise SegexportError("--warmup must be >= 0 and --eval-images >= 1")
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


def run_bench(request: BenchRequest, progress: Progress | None = None) -> BenchResult:
    """Prepare (or read) the artifact, open every row, evaluate, time; the rows in request order."""
    say = progress or (lambda _message: None)
    check_request(request)
    started = time.perf_counter()
    threads = request.threads or usable_cores()
    with _artifact(request, threads, say) as (directory, prepared):
        manifest = read_manifest(directory)
        spec = get_spec(manifest["model"]["name"])
        if spec.input_kind != "image":
            raise SegexportError(f"{spec.name}: bench handles image models")
        size = request.size or data_size(manifest)
        batches = _batches(request)
        for batch in batches:
            check_input_shapes(manifest, {"image": (batch, 3, *size)}, "--size/--batch")
        trained = prepared.get("trained", bool(manifest["model"].get("weights")))
        folder = labelled_folder(request.data, manifest, request.eval_images)
        runs, seconds = request.runs, (None if request.runs else request.seconds or DEFAULT_SECONDS)
        plan = _plan(parse_formats(request.formats), parse_backends(request.backends))
        say(
            f"bench {spec.name}: {request.scenario} at {size[0]}x{size[1]}, "
            f"batch {','.join(map(str, batches))}, "
            f"{threads} threads, {request.warmup} warm-up, "
            + (f"{runs} runs" if runs else f"{seconds:g} s")
            + " per format, interleaved"
        )
        rows, runners, memory_note = _open_rows(plan, directory, manifest, threads, request.warmup, size, say)
        try:
            accuracy_note = _evaluate(rows, runners, manifest, request, folder, threads, trained, say)
            cpu_before, clock = cpu_seconds(), time.perf_counter()
            _time_rows(
                rows, runners, manifest, size, batches, request.scenario, request.warmup, runs, seconds
            )
            others = other_processes_cores(cpu_before, time.perf_counter() - clock)
        finally:
            for runner in runners.values():
                _close(runner)
    _ratios(rows, request.scenario)
    header = {
        "ok": True,
        "model": spec.name,
        "artifact": None if prepared.get("temporary") else str(directory),
        "weights": (manifest["model"].get("weights") or {}).get("path"),
        "scenario": request.scenario,
        "scenario_note": f"{SCENARIOS[request.scenario][1]}; after MLPerf Inference's edge scenarios, "
        "shortened for development machines (a time budget per format, not MLPerf's minimum duration "
        "and query counts)",
        "headline": SCENARIOS[request.scenario][0],
        "size": list(size),
        "batches": batches,
        "threads": threads,
        "warmup": request.warmup,
        "runs": runs,
        "seconds_per_format": seconds,
        "data": request.data,
        "eval_images": request.eval_images,
        "accuracy_note": accuracy_note,
        "memory_note": memory_note,
        "gpu_split_note": GPU_SPLIT_NOT_MEASURED,
        "prepared_seconds": prepared.get("seconds"),
        "onnx_nodes": {
            "raw": manifest["onnx"].get("nodes_before_simplify"),
            "simplified": manifest["onnx"].get("nodes"),
        },
        "machine": {**machine_info(threads), "other_processes_cores": others},
        "machine_warning": busy_warning(others, threads),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return BenchResult(header, rows)


# --------------------------------------------------------------------------- the artifact


@contextmanager
def _artifact(request: BenchRequest, threads: int, say: Progress) -> Iterator[tuple[Path, dict[str, Any]]]:
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
        trained_size = (resolve_weights(spec.name, weights).record or {}).get("input_size")
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


def _batches(request: BenchRequest) -> list[int]:
    if request.batches:
        return list(request.batches)
    return {"single-stream": [1], "multi-stream": [MULTI_STREAM_FRAMES], "offline": list(OFFLINE_BATCHES)}[
        request.scenario
    ]


# --------------------------------------------------------------------------- opening rows


@dataclass(frozen=True)
class _Planned:
    format: str
    backend: str
    file: str | None


def _plan(formats: list[str], backends: list[str]) -> list[_Planned | Row]:
    """A (format, backend) pair for each backend that runs the format's kind of file; a row
    with the reason for a format that none of the requested backends runs."""
    plan: list[_Planned | Row] = []
    for name in formats:
        file = FORMAT_FILES[name]
        if file is None:
            plan.append(_Planned(name, PYTORCH, None))
            continue
        engine = file.endswith(".engine")
        usable = [b for b in backends if (BACKEND_ALIASES[b] == "tensorrt") == engine]
        plan += [_Planned(name, b, file) for b in usable]
        if not usable:
            wanted = "tensorrt" if engine else "ort-cpu, ort-cuda or ort-trt"
            plan.append(
                Row(name, "-", "unavailable", f"no requested backend runs it (add --backends {wanted})", file)
            )
    return plan


def _open_rows(
    plan: list[_Planned | Row],
    directory: Path,
    manifest: dict[str, Any],
    threads: int,
    warmup: int,
    size: tuple[int, int],
    say: Progress,
) -> tuple[list[Row], dict[int, Runner], str]:
    """Open each planned row (warm-up included), measuring the memory it adds."""
    rows: list[Row] = []
    runners: dict[int, Runner] = {}
    feeds = {"image": timing_input(manifest, size, 1)}
    resettable = _reset_peak()
    for item in plan:
        if isinstance(item, Row):
            rows.append(item)
            continue
        row = Row(item.format, item.backend, "ok", file=item.file)
        rows.append(row)
        if item.file is not None:
            reasons = []
            if item.file in manifest["files"]:
                row.size_mb = _file_mb(directory / item.file)
            elif os.path.lexists(directory / item.file):
                reasons.append(f"{item.file} is not listed in {MANIFEST}; refused")
            else:
                maker = "segexport trt" if item.file.endswith(".engine") else "segexport quantize"
                reasons.append(f"the artifact has no {item.file} ({maker} makes it)")
            unavailable = _backend(item.backend).unavailable()
            reasons += [unavailable] if unavailable else []
            if reasons:
                row.status, row.reason = "unavailable", "; ".join(reasons)
                continue
        say(f"loading {item.format} on {item.backend}")
        _reset_peak()
        before = _rss_mb("VmRSS") if resettable else 0.0
        runner = None
        try:
            runner = _open(item, directory, manifest, threads)
            for _ in range(warmup):
                runner.infer(feeds)
        except Exception as error:  # SegexportError says why; the runtime's own failures too
            known = isinstance(error, SegexportError)
            row.status = "unavailable"
            row.reason = first_line(error) if known else f"the runtime failed: {first_line(error)}"
            if runner is not None:
                _close(runner)
            continue
        peak = _rss_mb("VmHWM") - before if resettable else _process_peak_mb()
        row.peak_mem_mb = round(max(peak, 0.0), 1)
        row.backend_used = backend_used(runner)
        runners[len(rows) - 1] = runner
    return rows, runners, MEMORY_NOTE if resettable else MEMORY_FALLBACK_NOTE


def _close(runner: Runner) -> None:
    """Release what a runner holds (engines: streams and device memory)."""
    close = getattr(runner, "close", None)
    if close is not None:
        close()


def _backend(name: str) -> Backend:
    return next(entry for entry in BACKENDS if entry.name == BACKEND_ALIASES[name])


def _open(item: _Planned, directory: Path, manifest: dict[str, Any], threads: int) -> Runner:
    if item.file is None:
        spec = get_spec(manifest["model"]["name"])
        return TorchRunner(reference_model(manifest), spec.output_names, threads)
    return _backend(item.backend).open(directory, item.file, manifest, 0, threads)


def backend_used(runner: Runner) -> str:
    """What really ran: the session's providers for ONNX Runtime (a GPU provider that fell
    back shows up here, when the runner does not refuse it outright), the runner otherwise."""
    session = getattr(runner, "session", None)
    if session is not None:
        return "onnxruntime " + "+".join(p.removesuffix("ExecutionProvider") for p in session.get_providers())
    if isinstance(runner, TorchRunner):
        return f"pytorch {torch.__version__} eager (CPU)"
    return runner.name.split(":")[0]


def timing_input(manifest: dict[str, Any], size: tuple[int, int], batch: int) -> np.ndarray:
    """The same preprocessed synthetic frames for every row (seeded: identical across runs)."""
    prep = manifest["preprocessing"]
    images = np.stack([image for image, _ in SyntheticScenes("eval", batch, size)])
    return preprocess_for(prep, images)


def _file_mb(path: Path) -> float | None:
    return round(path.stat().st_size / 1e6, 2) if path.is_file() else None


def _reset_peak() -> bool:
    """Reset this process's peak resident memory (Linux: "5" into clear_refs); False if impossible.

    Free heap pages go back to the OS first (glibc's malloc_trim), so that a format's
    allocations show up instead of silently reusing memory an earlier stage freed.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _rss_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise SegexportError(f"/proc/self/status has no {key}")


def _process_peak_mb() -> float:
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


# --------------------------------------------------------------------------- accuracy


def _evaluate(
    rows: list[Row],
    runners: dict[int, Runner],
    manifest: dict[str, Any],
    request: BenchRequest,
    folder: EvaluationImages | None,
    threads: int,
    trained: bool,
    say: Progress,
) -> str:
    """mIoU and argmax agreement with PyTorch FP32 per row; `verify-failed` where the
    comparator's default tolerance for the file's precision is missed."""
    if not trained:
        return "- (random weights): accuracy means nothing on random weights; timed only"
    if not runners:
        return "no row ran"
    try:
        data = None if folder is None else folder.source
        evalset = evaluation_set(manifest, request.eval_images, threads, data)
    except SegexportError as error:
        return f"not measured: {first_line(error)}"
    say(f"evaluating {len(runners)} row(s) on {len(evalset.feeds)} {request.data} images")
    for index, runner in runners.items():
        row = rows[index]
        tolerance = None if row.file is None else default_tolerance(row.file)  # None: the reference
        try:
            figures = measure(runner, evalset, threads, tolerance)
        except Exception as error:  # e.g. an engine built for sizes below the evaluation size
            row.reason = f"accuracy not measured: {first_line(error)}"
            continue
        row.accuracy = {k: figures.get(k) for k in ("agreement", "miou", "rel_l2", "images")}
        if tolerance is None:
            continue
        row.accuracy["tolerance"] = asdict(tolerance)
        if figures["reasons"]:
            row.status, row.reason = "verify-failed", "; ".join(figures["reasons"])
    source = "the synthetic eval split" if request.data == "synthetic" else request.data
    return (
        f"on {len(evalset.feeds)} images of {source} at {'x'.join(map(str, data_size(manifest)))}; "
        "agreement: argmax agreement with PyTorch FP32; verify-failed: outside verify's default tolerance"
    )


def labelled_folder(data: str, manifest: dict[str, Any], count: int) -> EvaluationImages | None:
    """`--data DIR` opened and checked against the model's classes before any timing (None for
    synthetic, which quantize's evaluation split serves)."""
    if data == "synthetic":
        return None
    classes = manifest["model"]["class_names"]
    return evaluation_images(data, classes, count, data_size(manifest), need_labels=True)


# --------------------------------------------------------------------------- timing


def _time_rows(
    rows: list[Row],
    runners: dict[int, Runner],
    manifest: dict[str, Any],
    size: tuple[int, int],
    batches: list[int],
    scenario: str,
    warmup: int,
    runs: int | None,
    seconds: float | None,
) -> None:
    """Interleaved timed runs of every open row at each batch size; figures into the rows."""
    for batch in batches:
        feeds = {"image": timing_input(manifest, size, batch)}
        live = dict(runners)
        for index, runner in list(live.items()):
            try:
                for _ in range(max(warmup if batch != 1 else 0, 1)):  # batch 1 warmed up at load
                    runner.infer(feeds)
            except Exception as error:  # e.g. an engine built for smaller batches
                failed = f"batch {batch} failed: {first_line(error)}"
                rows[index].reason = "; ".join(filter(None, (rows[index].reason, failed)))
                del live[index]
        samples = interleaved_samples(list(live.values()), feeds, runs, seconds, f"timing batch {batch}")
        for index, (latencies, enqueues) in zip(live, samples, strict=True):
            stats = latency_stats(latencies)
            row = rows[index]
            figures = {
                **stats,
                "throughput_fps": round(batch * 1000 / stats["mean"], 2),
                "runs": len(latencies),
            }
            if enqueues:
                figures["enqueue_ms"] = round(float(np.median(enqueues)), 3)
            row.batches[batch] = figures
    for index, row in enumerate(rows):
        if not row.batches:
            if index in runners:  # it loaded, but no batch size ran
                row.status = "unavailable"
            continue
        best = (
            max(row.batches, key=lambda b: row.batches[b]["throughput_fps"])
            if scenario == "offline"
            else batches[0]
        )
        figures = dict(row.batches[best])
        row.batch, row.runs = best, int(figures.pop("runs"))
        row.throughput_fps = figures.pop("throughput_fps")
        row.enqueue_ms = figures.pop("enqueue_ms", None)
        row.latency_ms = figures
        if scenario != "offline":
            row.batches = {}
        if figures["std"] > HIGH_VARIATION * figures["mean"]:
            row.warning = (
                f"latency varies a lot between runs (coefficient of variation "
                f"{figures['std'] / figures['mean']:.0%} > {HIGH_VARIATION:.0%}): the machine is busy or "
                "throttling; rerun with more --seconds"
            )
        if row.backend in GPU_BACKENDS:
            row.gpu_split = {"measured": False, "reason": GPU_SPLIT_NOT_MEASURED}


def interleaved_samples(
    runners: Sequence[Runner],
    feeds: dict[str, np.ndarray],
    runs: int | None,
    seconds: float | None,
    label: str,
) -> list[tuple[list[float], list[float]]]:
    """Latencies (ms) of each runner, one run of each per round, and enqueue times for runners
    that split submission from collection (TensorRT's `submit`/`result`)."""
    samples: list[tuple[list[float], list[float]]] = [([], []) for _ in runners]
    if not runners:
        return samples
    budget = None if seconds is None else seconds * len(runners)
    bar = _bar(runs if runs else budget, label, "run" if runs else "s")
    started = time.perf_counter()
    rounds = 0
    while True:
        for runner, (latencies, enqueues) in zip(runners, samples, strict=True):
            latency, enqueue = _timed(runner, feeds)
            latencies.append(latency)
            if enqueue is not None:
                enqueues.append(enqueue)
        rounds += 1
        elapsed = time.perf_counter() - started
        bar.update(1 if runs else min(elapsed, budget or 0) - bar.n)
        if (runs is not None and rounds >= runs) or (
            budget is not None and elapsed >= budget and rounds >= MIN_TIMED_RUNS
        ):
            break
    bar.close()
    return samples


def _timed(runner: Runner, feeds: dict[str, np.ndarray]) -> tuple[float, float | None]:
    submit = getattr(runner, "submit", None)
    start = time.perf_counter()
    if submit is None:
        runner.infer(feeds)
        return (time.perf_counter() - start) * 1000, None
    frame = submit(feeds, slot_index=0)
    enqueued = time.perf_counter()
    runner.result(frame)  # type: ignore[attr-defined]
    end = time.perf_counter()
    return (end - start) * 1000, (enqueued - start) * 1000


def _bar(total: float | None, label: str, unit: str) -> Any:
    """A progress bar on a terminal (stderr), nothing in logs."""
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit=unit, file=sys.stderr, leave=False, disable=None)


def latency_stats(samples: Sequence[float]) -> dict[str, float]:
    """min / mean / median / p90 / p95 / p99 / max / std of latencies in ms."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        raise SegexportError("no timed runs")
    p50, p90, p95, p99 = np.percentile(values, PERCENTILES)
    figures = {
        "min": values.min(),
        "mean": values.mean(),
        "median": p50,
        "p90": p90,
        "p95": p95,
        "p99": p99,
        "max": values.max(),
        "std": values.std(),
    }
    return {key: round(float(value), 3) for key, value in figures.items()}


def _ratios(rows: list[Row], scenario: str) -> None:
    """Each row's speed relative to PyTorch eager in the same run (> 1: faster)."""
    base = next((r for r in rows if r.format == PYTORCH and r.latency_ms), None)
    if base is None:
        return
    for row in rows:
        if row.latency_ms is None:
            continue
        if scenario == "offline":
            assert row.throughput_fps is not None and base.throughput_fps is not None
            row.vs_pytorch = round(row.throughput_fps / base.throughput_fps, 2)
        else:
            key = SCENARIOS[scenario][0]
            assert base.latency_ms is not None
            row.vs_pytorch = round(base.latency_ms[key] / row.latency_ms[key], 2)


# --------------------------------------------------------------------------- the machine


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_seconds() -> tuple[float, float] | None:
    """CPU seconds every process has used since boot, and this process's (None off Linux)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - fields[4]  # user .. steal, less idle and iowait
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return busy / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime


def other_processes_cores(before: tuple[float, float] | None, wall: float) -> float | None:
    """How many cores other processes kept busy, on average, since `before`."""
    after = cpu_seconds()
    if before is None or after is None or wall <= 0:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return round(max(others, 0.0) / wall, 2)


def busy_warning(others: float | None, threads: int) -> str | None:
    """A warning when other processes took CPU the benchmark needed: contention makes every
    timing noisy, and PyTorch's OpenMP threads (spinning barriers) suffer most."""
    spare = usable_cores() - threads  # cores the benchmark leaves to others
    if others is None or others <= max(BUSY_CORES, spare):
        return None
    return (
        f"other processes kept {others:.2f} cores busy during the timed runs ({threads} threads "
        f"here, {spare + threads} usable cores): timings are noisy and CPU rows, PyTorch most, "
        "run slower than on a quiet machine"
    )


def machine_info(threads: int) -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, GPU and clocks where readable, versions."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }
    for module in ("onnx", "tensorrt"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # not installed, or a broken install: not part of this machine's stack
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "threads": threads,
        "os": platform.platform(),
        "gpu": _gpu_note(),
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "versions": versions,
    }


def _gpu_note() -> str:
    """GPU name, clocks and driver from nvidia-smi, or why there is none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "none (no nvidia-smi)"
    query = "name,clocks.sm,clocks.max.sm,clocks.mem,driver_version"
    try:
        output = subprocess.run(
            [smi, f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"unreadable ({first_line(error)})"
    return output or "none (nvidia-smi lists no GPU)"
