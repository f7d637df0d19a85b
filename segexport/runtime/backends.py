"""Which backend runs an artifact on this machine, and why the better ones were not taken.

`BACKENDS` is an ordered table, best first. Each entry says which file kind it runs,
which precisions `precision="auto"` prefers on it, and how to check that it can run here;
adding a backend is adding one entry. `select_runner` walks the table, opens the first
entry that works, and keeps the reason each better one was passed over, because
"it silently ran on the CPU" is the classic deployment surprise (ONNX Runtime falls back
to the CPU provider without an error when CUDA cannot load, so the session's providers
are checked after it is created).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segexport.errors import SegexportError, UnavailableError, first_line
from segexport.runtime.artifacts import vouched_path
from segexport.runtime.files import ENGINE_PRECISIONS, cpu_onnx_file_name, engine_file_name, onnx_file_name
from segexport.runtime.runners import Runner, open_onnx_runner

PRECISIONS = ENGINE_PRECISIONS


@dataclass(frozen=True)
class Backend:
    name: str
    # How a precision maps to the artifact file this backend runs.
    file_for: Callable[[str], str]
    # Preference order for precision="auto": the fastest precision the backend runs well.
    auto_precisions: tuple[str, ...]
    # Why the backend cannot run here at all (None: it might; opening it decides).
    unavailable: Callable[[], str | None]
    open: Callable[[Path, str, dict[str, Any], int, int | None], Runner]
    # Whether one runner may be called from several threads at once.
    thread_safe: bool = True


def _tensorrt_unavailable() -> str | None:
    from segexport.runtime.engine_records import tensorrt_unavailable_reason

    return tensorrt_unavailable_reason()


def _open_engine(
    directory: Path, file_name: str, manifest: dict[str, Any], device: int, _: int | None
) -> Runner:
    from segexport.runtime.engine import open_engine_runner

    if device != 0:
        raise UnavailableError("the TensorRT runner runs on device 0 only; use an ONNX Runtime backend")
    return open_engine_runner(directory, file_name, manifest)


def _provider_unavailable(provider: str) -> Callable[[], str | None]:
    def check() -> str | None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if provider not in available:
            return (
                f"this onnxruntime build has no {provider} (it has {', '.join(available)}; "
                "the GPU builds are onnxruntime-gpu, or JetPack's wheel on a Jetson)"
            )
        return None

    return check


def _open_ort_cpu(
    directory: Path, file_name: str, manifest: dict[str, Any], _device: int, threads: int | None
) -> Runner:
    return open_onnx_runner(directory, file_name, manifest, threads)


def _open_ort_cuda(
    directory: Path, file_name: str, manifest: dict[str, Any], device: int, threads: int | None
) -> Runner:
    from segexport.runtime.ort_gpu import OrtCudaRunner  # refuses a silent CPU fallback

    return OrtCudaRunner(vouched_path(directory, file_name, manifest), device_id=device, threads=threads)


def _open_ort_tensorrt(
    directory: Path, file_name: str, manifest: dict[str, Any], device: int, threads: int | None
) -> Runner:
    from segexport.runtime.engine_records import current_gpu
    from segexport.runtime.ort_gpu import OrtTensorRTRunner  # refuses a silent CPU fallback

    try:  # the engine cache is keyed by the GPU model; without cuda-python, by the device index
        gpu = current_gpu(device).name
    except UnavailableError:
        gpu = f"cuda-device-{device}"
    path = vouched_path(directory, file_name, manifest)
    return OrtTensorRTRunner(
        path, manifest, cache_root=ORT_TENSORRT_CACHE, gpu=gpu, device_id=device, threads=threads
    )


# Where ONNX Runtime's TensorRT provider keeps the engines it builds (minutes each): per user,
# keyed inside by model, versions and GPU (segexport.runtime.ort_gpu.engine_cache_key).
ORT_TENSORRT_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segexport" / "ort-tensorrt"
)


BACKENDS: tuple[Backend, ...] = (
    Backend(
        "tensorrt",
        engine_file_name,
        ("int8", "fp16", "fp32"),  # each engine was verified when `segexport trt` built it
        _tensorrt_unavailable,
        _open_engine,
        thread_safe=False,  # one execution context and one CUDA stream
    ),
    Backend(
        "onnxruntime-tensorrt",
        onnx_file_name,
        ("fp16", "fp32", "int8"),
        _provider_unavailable("TensorrtExecutionProvider"),
        _open_ort_tensorrt,
    ),
    Backend(
        "onnxruntime-cuda",
        onnx_file_name,
        ("fp16", "fp32", "int8"),
        _provider_unavailable("CUDAExecutionProvider"),
        _open_ort_cuda,
    ),
    Backend(
        "onnxruntime-cpu",
        cpu_onnx_file_name,
        # FP32 is the exact one; `--precision int8` takes model.int8-cpu.onnx (verified against
        # its agreement target when it was made); FP16 kernels are slow on CPUs.
        ("fp32", "int8", "fp16"),
        lambda: None,
        _open_ort_cpu,
    ),
)
BACKEND_NAMES = tuple(backend.name for backend in BACKENDS)


@dataclass(frozen=True)
class Selection:
    """What `select_runner` opened, and why each better candidate was not taken."""

    backend: Backend
    precision: str
    file_name: str
    passed_over: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: `backend: NAME, FILE (why: ...)`; `describe()` has the whole table."""
        why = ", ".join(f"{name}: {_short(reason)}" for name, reason in self.passed_over)
        return f"backend: {self.backend.name}, {self.file_name}" + (f" (why: {why})" if why else "")

    def describe(self) -> str:
        text = f"{self.backend.name} running {self.file_name} ({self.precision})"
        if self.passed_over:
            text += "; not taken: " + "; ".join(f"{name}: {reason}" for name, reason in self.passed_over)
        return text


def _short(reason: str) -> str:
    """The gist of a reason, for the one-line summary ("no engine", "no CUDAExecutionProvider")."""
    first = reason.split(" (")[0].split("; ")[0].strip()
    if first.startswith("the artifact has no"):
        return "no engine" if ".engine" in first else "no " + first.split()[-1]
    return first.replace("this onnxruntime build has ", "")


def _candidates(backend: Backend, precision: str, manifest: dict[str, Any]) -> tuple[list[str], str | None]:
    """The precisions to try on `backend`, best first, or why there is none."""
    wanted = backend.auto_precisions if precision == "auto" else (precision,)
    files = manifest.get("files", {})
    present = [p for p in wanted if backend.file_for(p) in files]
    if present:
        return present, None
    names = ", ".join(backend.file_for(p) for p in wanted)
    return [], f"the artifact has no {names} (vouched files: {', '.join(sorted(files)) or 'none'})"


def select_runner(
    directory: Path,
    manifest: dict[str, Any],
    backend: str = "auto",
    precision: str = "auto",
    device: int = 0,
    threads: int | None = None,
) -> tuple[Runner, Selection]:
    """Open the best (backend, precision) this machine runs, or the one asked for.

    With `backend="auto"` a backend that cannot run is passed over with its reason; an
    explicit choice that cannot run raises that reason.
    """
    if backend != "auto" and backend not in BACKEND_NAMES:
        raise SegexportError(f"unknown backend {backend!r}; use auto or one of {', '.join(BACKEND_NAMES)}")
    if precision != "auto" and precision not in PRECISIONS:
        raise SegexportError(f"unknown precision {precision!r}; use auto or one of {', '.join(PRECISIONS)}")
    table = BACKENDS if backend == "auto" else tuple(b for b in BACKENDS if b.name == backend)
    passed_over: list[tuple[str, str]] = []
    for entry in table:
        precisions, reason = _candidates(entry, precision, manifest)
        reason = reason or entry.unavailable()
        for option in precisions if reason is None else []:
            file_name = entry.file_for(option)
            try:
                runner = entry.open(directory, file_name, manifest, device, threads)
            except SegexportError as error:
                passed_over.append((f"{entry.name} {option}", first_line(error)))
                continue
            return runner, Selection(entry, option, file_name, passed_over)
        if reason is not None:
            passed_over.append((entry.name, reason))
    detail = "; ".join(f"{name}: {why}" for name, why in passed_over)
    cpu_int8 = cpu_onnx_file_name("int8")
    cpu_allowed = backend in ("auto", "onnxruntime-cpu")
    if precision == "int8" and cpu_allowed and cpu_int8 not in manifest.get("files", {}):
        raise UnavailableError(
            f"no INT8 graph this machine runs: the CPU needs {cpu_int8}; make it with "
            f"segexport quantize --int8-cpu --artifacts {directory} (or pass --precision fp32)"
        )
    if backend != "auto" or precision != "auto":
        raise UnavailableError(f"cannot run {backend} {precision} here ({detail})")
    raise UnavailableError(f"no backend can run {directory} here ({detail})")
