"""Runners: every backend of the runtime behind one interface (no torch import).

Every backend is a `Runner`: named numpy inputs in, named numpy outputs out. The
verification stage compares runners; robotics and video pipelines use them directly.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from segexport.errors import SegexportError, first_line
from segexport.runtime.artifacts import read_manifest, vouched_bytes
from segexport.runtime.cpu_isa import int8_cpu_mismatch
from segexport.runtime.files import emulates_tensorrt_qdq
from segexport.runtime.inputs import check_input_shapes

# `--threads` above this is refused: ONNX Runtime crashes (SIGSEGV) creating 100,000 threads,
# and past a few per core more threads only contend.
THREADS_PER_CORE_CAP = 4
MAX_THREADS = THREADS_PER_CORE_CAP * (os.cpu_count() or 1)


def check_threads(threads: int | None) -> None:
    """Refuse a thread count below 1 or above MAX_THREADS (4 per core) in one line."""
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise SegexportError(
            f"threads must be 1..{MAX_THREADS} ({THREADS_PER_CORE_CAP} per core here), got {threads}"
        )


class Runner(Protocol):
    """One backend that maps named inputs to named outputs."""

    name: str

    @property
    def output_names(self) -> list[str]: ...

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


# Whether ONNX Runtime's intra-op threads spin-wait for work (its default: the lowest latency for
# one session). A process that interleaves several sessions (`segexport bench`) turns it off for
# the sessions it opens: an idle session's spinning threads take the cores the timed one needs
# (unet-small FP32 at 512x512 on 2 cores, interleaved with its INT8 graph: 176 ms spinning,
# 143 ms not; alone, 135 ms).
_SPIN_WAITING: ContextVar[bool] = ContextVar("segexport_ort_spin_waiting", default=True)


@contextlib.contextmanager
def spin_waiting(enabled: bool) -> Iterator[None]:
    """ONNX Runtime sessions created inside spin-wait (`True`, the default) or block."""
    token = _SPIN_WAITING.set(enabled)
    try:
        yield
    finally:
        _SPIN_WAITING.reset(token)


class OnnxRuntimeRunner:
    """An ONNX Runtime session on the CPU unless providers say otherwise.

    `model` is a path or the model's bytes (what `vouched_bytes` returns: the checked bytes
    are the ones that run, and bytes cannot pull in external data files). With a manifest,
    inputs outside its verified ranges or against its size rule are refused before running.
    """

    def __init__(
        self,
        model: Path | bytes,
        threads: int | None = None,
        providers: Sequence[str | tuple[str, dict[str, Any]]] = ("CPUExecutionProvider",),
        manifest: dict[str, Any] | None = None,
        name: str | None = None,
        emulate_qdq: bool = False,
        profile_prefix: str | None = None,
    ) -> None:
        """`emulate_qdq`: run Q/DQ nodes as written instead of ONNX Runtime's fused integer
        kernels, whose arithmetic differs between CPUs (segexport.runtime.cpu_isa): TensorRT's
        numerics (exact INT32 accumulation), the same on every machine. `profile_prefix`: turn on
        ONNX Runtime's profiler, its JSON written from that prefix (`session.end_profiling()`)."""
        import onnxruntime as ort

        check_threads(threads)
        label = name or (Path(model).name if isinstance(model, (str, Path)) else "model.onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if emulate_qdq:
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        if not _SPIN_WAITING.get():
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, sess_options=options, providers=list(providers))
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/... types
            raise SegexportError(f"{label}: ONNX Runtime cannot load it ({first_line(error)})") from error
        self.name = f"onnxruntime:{label}"
        self.manifest = manifest

    @property
    def input_names(self) -> list[str]:
        return [node.name for node in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [node.name for node in self.session.get_outputs()]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.manifest is not None:
            check_input_shapes(self.manifest, {k: tuple(v.shape) for k, v in feeds.items()}, self.name)
        outputs = self.session.run(None, feeds)
        return dict(zip(self.output_names, (np.asarray(o) for o in outputs), strict=True))


def emulates_qdq_here(manifest: dict[str, Any], file_name: str) -> bool:
    """Whether ONNX Runtime on this CPU runs the file's Q/DQ as written (TensorRT's graph); warns
    first when an `int8-cpu` graph was made for another CPU's INT8 arithmetic."""
    problem = int8_cpu_mismatch(manifest, file_name)
    if problem is not None:
        warnings.warn(problem, RuntimeWarning, stacklevel=3)
    return emulates_tensorrt_qdq(file_name)


def open_onnx_runner(
    directory: Path, file_name: str, manifest: dict[str, Any], threads: int | None = None
) -> OnnxRuntimeRunner:
    """The one way an artifact's ONNX file opens on ONNX Runtime's CPU provider: the bytes the
    manifest vouches for, input shapes checked against its range, TensorRT's Q/DQ emulated."""
    data = vouched_bytes(directory, file_name, manifest)
    emulate = emulates_qdq_here(manifest, file_name)
    return OnnxRuntimeRunner(data, threads=threads, manifest=manifest, name=file_name, emulate_qdq=emulate)


def open_runner(
    directory: Path, file_name: str, manifest: dict[str, Any], threads: int | None = None
) -> Runner:
    """A Runner for any model file an artifact holds, after the manifest vouches for it.

    `.onnx` runs in ONNX Runtime; `.engine` in TensorRT through `segexport.runtime.engine`, which
    only machines with TensorRT need (imported here, never at module load).
    """
    suffix = Path(file_name).suffix
    if suffix == ".onnx":
        return open_onnx_runner(directory, file_name, manifest, threads)
    if suffix == ".engine":
        from segexport.runtime.engine import open_engine_runner  # cuda-python/TensorRT: only when asked

        return open_engine_runner(directory, file_name, manifest)
    raise SegexportError(f"{directory / file_name}: no runner for {suffix or 'files without a suffix'}")


def open_artifact(
    directory: str | Path, file_name: str = "model.onnx", threads: int | None = None
) -> tuple[Runner, dict[str, Any]]:
    """A pipeline's entry point: the artifact's manifest and a runner for one of its files
    (ONNX or engine), loaded only after the manifest vouches for it."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    return open_runner(directory, file_name, manifest, threads), manifest
