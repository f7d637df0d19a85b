"""cuda-python helpers for the GPU runners: checked calls, pinned and device buffers, streams, graphs.

Every CUDA runtime call goes through `Cuda.call(name, *args)`, which unwraps cuda-python's
`(error, value...)` tuples and raises `CudaError` naming the call and the driver's own error
string (`cudaGetErrorString`). Each resource object releases its handle exactly once:
`free()`/`destroy()` after the first are no-ops, so a runner's `close()` may run twice.

Only `cuda.bindings.runtime` (cuda-python >= 12.6; `cuda.cudart` before) is used: no torch,
no pycuda. The module is imported when a `Cuda` is made, never at import time, and the tests
run the same code against an emulator of that module (`tests/emulator/`).

Sources relied on: CUDA Runtime API (`cudaHostAlloc`: page-locked memory is what makes
`cudaMemcpyAsync` asynchronous; pageable copies are staged and synchronous), CUDA
Programming Guide "Stream Capture" (capture in `cudaStreamCaptureModeThreadLocal` so other
threads' calls are not affected; no synchronisation inside a capture).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
from typing import Any

import numpy as np

from segexport.errors import UnavailableError


class CudaError(UnavailableError):
    """A CUDA runtime call failed; the message names the call and CUDA's error string."""


def import_cudart() -> Any:
    """cuda-python's runtime module: `cuda.bindings.runtime` (12.6+), `cuda.cudart` before."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise UnavailableError(
        "cuda-python is not installed (pip install 'segexport[cuda12]' for CUDA 12 drivers and "
        "JetPack 6, 'segexport[cuda13]' for CUDA 13; 'segexport[trt-cu12|13]' adds TensorRT's wheels)"
    )


def bindings_version() -> str | None:
    """The installed cuda-python bindings' package version (cuda-bindings, or cuda-python < 12.6)."""
    for package in ("cuda-bindings", "cuda-python"):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _cuda_version(encoded: int) -> str:
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


class Cuda:
    """One cuda-python runtime module, with every call checked."""

    def __init__(self, cudart: Any | None = None) -> None:
        self.rt = cudart if cudart is not None else import_cudart()

    def error_text(self, error: Any) -> str:
        name = getattr(error, "name", None) or f"error {int(error)}"
        try:
            status, message = self.rt.cudaGetErrorString(error)
        except Exception:  # an error code the bindings don't know
            return name
        if int(status) != 0 or not message:
            return name
        text = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
        return f"{name}: {text}"

    def check(self, call: str, result: Any) -> Any:
        """The value(s) of a `(error, value...)` result; `CudaError` naming `call` otherwise."""
        error, *values = result if isinstance(result, tuple) else (result,)
        if int(error) != 0:
            raise CudaError(f"{call} failed ({self.error_text(error)})")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def call(self, name: str, *args: Any) -> Any:
        """`cudart.<name>(*args)`, checked: the error names the call by construction."""
        return self.check(name, getattr(self.rt, name)(*args))

    def versions(self) -> dict[str, Any]:
        """The driver's and the bindings' CUDA versions, and why they can't work together (or None).

        cuda-python 13 is built against CUDA 13 and needs a CUDA 13 driver (JetPack 6 is CUDA 12);
        within one major version CUDA's minor-version compatibility lets an older driver run it.
        """
        driver = int(self.check("cudaDriverGetVersion", self.rt.cudaDriverGetVersion()))
        runtime = int(self.check("cudaRuntimeGetVersion", self.rt.cudaRuntimeGetVersion()))
        report: dict[str, Any] = {
            "driver": _cuda_version(driver) if driver else None,
            "bindings": _cuda_version(runtime),
            "bindings_package": bindings_version(),
            "problem": None,
        }
        if not driver:
            report["problem"] = "no NVIDIA driver is loaded"
        elif runtime // 1000 > driver // 1000:
            major = driver // 1000
            report["problem"] = (
                f"cuda-python {report['bindings_package']} is built for CUDA {report['bindings']}, but the "
                f"driver supports CUDA {report['driver']}: install the bindings for CUDA {major} "
                f"(pip install 'segexport[cuda{major}]'; 'segexport[trt-cu{major}]' adds TensorRT's wheels)"
            )
        return report


class DeviceBuffer:
    """`cudaMalloc` memory; `free()` releases it once."""

    def __init__(self, cuda: Cuda, nbytes: int) -> None:
        self._cuda = cuda
        self.nbytes = int(nbytes)
        self.pointer: int = int(cuda.call("cudaMalloc", max(self.nbytes, 1)))

    def free(self) -> None:
        if self.pointer:
            pointer, self.pointer = self.pointer, 0
            self._cuda.call("cudaFree", pointer)


class PinnedBuffer:
    """Page-locked host memory (`cudaHostAlloc`), so that copies to and from it are asynchronous."""

    def __init__(self, cuda: Cuda, nbytes: int) -> None:
        self._cuda = cuda
        self.nbytes = int(nbytes)
        self.pointer: int = int(cuda.call("cudaHostAlloc", max(self.nbytes, 1), cuda.rt.cudaHostAllocDefault))
        raw = (ctypes.c_uint8 * max(self.nbytes, 1)).from_address(self.pointer)
        self._bytes = np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8)

    def array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A numpy view of the buffer's start, as `shape` of `dtype` (no copy)."""
        count = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if count > self.nbytes:
            raise ValueError(f"{count} bytes asked of a {self.nbytes}-byte pinned buffer")
        return self._bytes[:count].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.pointer:
            pointer, self.pointer = self.pointer, 0
            self._bytes = np.empty(0, np.uint8)  # no view may outlive the memory
            self._cuda.call("cudaFreeHost", pointer)


class Stream:
    """A non-blocking stream (no implicit synchronisation with the legacy default stream)."""

    def __init__(self, cuda: Cuda) -> None:
        self._cuda = cuda
        self.handle: Any = cuda.call("cudaStreamCreateWithFlags", cuda.rt.cudaStreamNonBlocking)

    def __int__(self) -> int:
        return int(self.handle)

    def copy_to_device(self, device: int, host: int, nbytes: int) -> None:
        kind = self._cuda.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._cuda.call("cudaMemcpyAsync", device, host, nbytes, kind, self.handle)

    def copy_to_host(self, host: int, device: int, nbytes: int) -> None:
        kind = self._cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._cuda.call("cudaMemcpyAsync", host, device, nbytes, kind, self.handle)

    def synchronize(self) -> None:
        self._cuda.call("cudaStreamSynchronize", self.handle)

    def destroy(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            self._cuda.call("cudaStreamDestroy", handle)


class CudaGraph:
    """An instantiated graph of the work one callable enqueues on a stream, replayed by `launch`.

    What is captured is fixed: addresses, sizes and (for TensorRT) shapes. Callers re-capture
    when any of them changes.
    """

    def __init__(self, cuda: Cuda, stream: Stream, enqueue: Any) -> None:
        self._cuda = cuda
        self._stream = stream
        mode = cuda.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda.call("cudaStreamBeginCapture", stream.handle, mode)
        try:
            enqueue()
        except BaseException:
            self._end_capture_quietly()
            raise
        graph = cuda.call("cudaStreamEndCapture", stream.handle)
        try:
            self.handle: Any = cuda.call("cudaGraphInstantiate", graph, 0)
        finally:
            cuda.call("cudaGraphDestroy", graph)  # the executable graph keeps what it needs

    def _end_capture_quietly(self) -> None:
        """Leave capture mode after a failure inside it; the half-built graph is dropped."""
        error, graph = self._cuda.rt.cudaStreamEndCapture(self._stream.handle)
        if int(error) == 0 and graph is not None:
            self._cuda.rt.cudaGraphDestroy(graph)

    def launch(self) -> None:
        self._cuda.call("cudaGraphLaunch", self.handle, self._stream.handle)

    def destroy(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            self._cuda.call("cudaGraphExecDestroy", handle)
