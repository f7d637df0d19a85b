"""`segexport bench`'s rows: one per format and backend, planned from the options, opened
(warm-up included) with the memory each adds; a row that cannot open keeps its reason.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segexport.bench.machine import process_peak_mb, reset_peak, rss_mb
from segexport.bench.options import BACKEND_ALIASES, FORMAT_FILES, PYTORCH, Progress
from segexport.errors import SegexportError, first_line
from segexport.reference import TorchRunner, reference_runner
from segexport.runtime import Runner
from segexport.runtime.artifacts import MANIFEST
from segexport.runtime.backends import BACKENDS, Backend

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
    profile: dict[str, Any] | None = None  # --profile: kernel time per op type (bench.profile)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["batches"] = {str(k): v for k, v in self.batches.items()}
        return data


@dataclass(frozen=True)
class _Planned:
    format: str
    backend: str
    file: str | None


def plan_rows(formats: list[str], backends: list[str]) -> list[_Planned | Row]:
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


def open_rows(
    plan: list[_Planned | Row],
    directory: Path,
    manifest: dict[str, Any],
    threads: int,
    warmup: int,
    feeds: dict[str, np.ndarray],
    say: Progress,
    deadline: float | None = None,
) -> tuple[list[Row], dict[int, Runner], str]:
    """Open each planned row (warm-up on `feeds`, the batch-1 timing input), measuring the memory it adds."""
    rows: list[Row] = []
    runners: dict[int, Runner] = {}
    resettable = reset_peak()
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
        reset_peak()
        before = rss_mb("VmRSS") if resettable else 0.0
        runner = None
        try:
            runner = _open(item, directory, manifest, threads)
            for _ in range(warmup):
                if deadline is not None and time.perf_counter() >= deadline:
                    break  # --max-seconds spent
                runner.infer(feeds)
        except Exception as error:  # SegexportError says why; the runtime's own failures too
            known = isinstance(error, SegexportError)
            row.status = "unavailable"
            row.reason = first_line(error) if known else f"the runtime failed: {first_line(error)}"
            if runner is not None:
                close_runner(runner)
            continue
        peak = rss_mb("VmHWM") - before if resettable else process_peak_mb()
        row.peak_mem_mb = round(max(peak, 0.0), 1)
        row.backend_used = backend_used(runner)
        runners[len(rows) - 1] = runner
    return rows, runners, MEMORY_NOTE if resettable else MEMORY_FALLBACK_NOTE


def close_runner(runner: Runner) -> None:
    """Release what a runner holds (engines: streams and device memory)."""
    close = getattr(runner, "close", None)
    if close is not None:
        close()


def _backend(name: str) -> Backend:
    return next(entry for entry in BACKENDS if entry.name == BACKEND_ALIASES[name])


def _open(item: _Planned, directory: Path, manifest: dict[str, Any], threads: int) -> Runner:
    if item.file is None:
        return reference_runner(manifest, directory, threads, onnx_fallback=True)
    return _backend(item.backend).open(directory, item.file, manifest, 0, threads)


def backend_used(runner: Runner) -> str:
    """What really ran: the session's providers for ONNX Runtime (a GPU provider that fell
    back shows up here, when the runner does not refuse it outright), the runner otherwise."""
    inner = getattr(runner, "inner", None)  # a FramesRunner: the reference it wraps
    if inner is not None:
        return backend_used(inner)
    session = getattr(runner, "session", None)
    if session is not None:
        return "onnxruntime " + "+".join(p.removesuffix("ExecutionProvider") for p in session.get_providers())
    if isinstance(runner, TorchRunner):
        return f"pytorch {torch.__version__} eager (CPU)"
    return runner.name.split(":")[0]


def _file_mb(path: Path) -> float | None:
    return round(path.stat().st_size / 1e6, 2) if path.is_file() else None
