"""The emulated GPU and its `cuda.bindings.runtime` surface (see the package docstring)."""

from __future__ import annotations

import ctypes
import enum
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CHECKS = ("deferred", "bounds", "address", "shapes", "double-free", "pinned", "threads", "warmup")
POISON = 0xFF  # what a download's destination holds until the stream is synchronised


class Misuse(AssertionError):
    """Something a real GPU would punish without an error code; `check` names the emulator's check."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"[{check}] {message}")
        self.check = check


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalAddress = 700
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


# The runtime's own strings (cudaGetErrorString) for the codes above.
MESSAGES = {
    cudaError_t.cudaSuccess: "no error",
    cudaError_t.cudaErrorInvalidValue: "invalid argument",
    cudaError_t.cudaErrorMemoryAllocation: "out of memory",
    cudaError_t.cudaErrorInsufficientDriver: "CUDA driver version is insufficient for CUDA runtime version",
    cudaError_t.cudaErrorNoDevice: "no CUDA-capable device is detected",
    cudaError_t.cudaErrorInvalidResourceHandle: "invalid resource handle",
    cudaError_t.cudaErrorIllegalAddress: "an illegal memory access was encountered",
    cudaError_t.cudaErrorStreamCaptureUnsupported: "operation not permitted when stream is capturing",
    cudaError_t.cudaErrorStreamCaptureInvalidated: "operation failed due to a previous error during capture",
}


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaStreamCaptureStatus(enum.IntEnum):
    cudaStreamCaptureStatusNone = 0
    cudaStreamCaptureStatusActive = 1
    cudaStreamCaptureStatusInvalidated = 2


class _Handle:
    """cuda-python's opaque handle types: constructed from an int, read back with int()."""

    def __init__(self, init_value: int = 0) -> None:
        self._value = int(init_value)

    def __int__(self) -> int:
        return self._value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 0x{self._value:x}>"


class cudaStream_t(_Handle):
    pass


class cudaGraph_t(_Handle):
    pass


class cudaGraphExec_t(_Handle):
    pass


@dataclass
class cudaDeviceProp:
    name: bytes = b"Emulated GPU"
    major: int = 8
    minor: int = 7
    totalGlobalMem: int = 1 << 32


Op = Callable[[], int]  # enqueued work: returns a cudaError_t value when it runs


@dataclass
class EmulatedStream:
    queue: list[Op] = field(default_factory=list)
    capture: list[Op] | None = None
    capture_broken: bool = False
    on_complete: list[Callable[[], None]] = field(default_factory=list)


OK = cudaError_t.cudaSuccess


class Device:
    """One emulated GPU: allocations, pinned host memory, streams and graphs, with the checks."""

    def __init__(
        self,
        disabled: Iterable[str] = (),
        memory: int = 1 << 30,
        driver: int = 13000,
        runtime: int = 13000,
    ) -> None:
        unknown = set(disabled) - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown emulator checks {unknown}; they are {CHECKS}")
        self.disabled = set(disabled)
        self.memory = memory
        self.driver, self.runtime = driver, runtime
        self.allocations: dict[int, np.ndarray] = {}
        self.freed: dict[int, np.ndarray] = {}
        self.pinned: dict[int, np.ndarray] = {}
        self.freed_pinned: set[int] = set()
        self.streams: dict[int, EmulatedStream] = {}
        self.graphs: dict[int, list[Op]] = {}
        self.execs: dict[int, list[Op]] = {}
        self.calls: Counter[str] = Counter()
        self._next_handle = 0x7F00_0000_0000
        self._lock = threading.Lock()

    def enabled(self, check: str) -> bool:
        return check not in self.disabled

    def _handle(self, size: int = 256) -> int:
        with self._lock:
            handle = self._next_handle
            self._next_handle += (size + 511) // 256 * 256
        return handle

    # -- memory ----------------------------------------------------------------------------------

    def device_bytes(self, address: int, count: int) -> tuple[np.ndarray | None, int]:
        """The bytes at a device address, or None with the error a real access would raise."""
        for pool, live in ((self.allocations, True), (self.freed, False)):
            for base, memory in pool.items():
                if base <= address < base + memory.size:
                    offset = address - base
                    if offset + count > memory.size and self.enabled("bounds"):
                        return None, cudaError_t.cudaErrorInvalidValue
                    if not live and self.enabled("address"):
                        return None, cudaError_t.cudaErrorIllegalAddress
                    return memory[offset : offset + count], OK
        return None, cudaError_t.cudaErrorInvalidValue

    def host_bytes(self, address: int, count: int) -> np.ndarray:
        for base, memory in self.pinned.items():
            if base <= address and address + count <= base + memory.size:
                return memory[address - base : address - base + count]
        if self.enabled("pinned"):
            raise Misuse(
                "pinned",
                f"async copy of {count} bytes at host address 0x{address:x}, which is not page-locked "
                "(cudaHostAlloc): CUDA would copy it synchronously",
            )
        return np.ctypeslib.as_array((ctypes.c_uint8 * count).from_address(address))

    def stream(self, handle: Any) -> EmulatedStream | None:
        return self.streams.get(int(handle) if handle is not None else 0)

    def enqueue(self, handle: Any, op: Op, run_now: bool = False) -> int:
        """Queue work on a stream (or into its capture); run it at sync unless `deferred` is off."""
        stream = self.stream(handle)
        if stream is None:
            return cudaError_t.cudaErrorInvalidResourceHandle
        if stream.capture is not None:
            stream.capture.append(op)
        elif self.enabled("deferred") and not run_now:
            stream.queue.append(op)
        else:
            return op()
        return OK


class Runtime:
    """The functions of `cuda.bindings.runtime` that segexport calls, bound to one `Device`."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def _count(self, name: str) -> None:
        self.device.calls[name] += 1

    def cudaGetErrorString(self, error: Any) -> tuple[cudaError_t, bytes]:
        return OK, MESSAGES.get(cudaError_t(int(error)), "unrecognized error code").encode()

    def cudaGetErrorName(self, error: Any) -> tuple[cudaError_t, bytes]:
        return OK, cudaError_t(int(error)).name.encode()

    def cudaDriverGetVersion(self) -> tuple[cudaError_t, int]:
        return OK, self.device.driver

    def cudaRuntimeGetVersion(self) -> tuple[cudaError_t, int]:
        return OK, self.device.runtime

    def cudaGetDeviceCount(self) -> tuple[cudaError_t, int]:
        return OK, 1

    def cudaGetDeviceProperties(self, device: int) -> tuple[cudaError_t, cudaDeviceProp | None]:
        if int(device) != 0:
            return cudaError_t.cudaErrorInvalidValue, None
        return OK, cudaDeviceProp()

    def cudaMemGetInfo(self) -> tuple[cudaError_t, int, int]:
        used = sum(memory.size for memory in self.device.allocations.values())
        return OK, self.device.memory - used, self.device.memory

    def cudaMalloc(self, size: int) -> tuple[cudaError_t, int]:
        self._count("cudaMalloc")
        used = sum(memory.size for memory in self.device.allocations.values())
        if used + int(size) > self.device.memory:
            return cudaError_t.cudaErrorMemoryAllocation, 0
        handle = self.device._handle(int(size))
        self.device.allocations[handle] = np.zeros(int(size), np.uint8)
        return OK, handle

    def cudaFree(self, devPtr: Any) -> tuple[cudaError_t]:
        self._count("cudaFree")
        memory = self.device.allocations.pop(int(devPtr), None)
        if memory is None:
            twice = int(devPtr) in self.device.freed
            if twice and not self.device.enabled("double-free"):
                return (OK,)
            return (cudaError_t.cudaErrorInvalidValue,)
        self.device.freed[int(devPtr)] = memory
        return (OK,)

    def cudaHostAlloc(self, size: int, flags: int) -> tuple[cudaError_t, int]:
        self._count("cudaHostAlloc")
        memory = np.zeros(int(size), np.uint8)
        address = int(memory.ctypes.data)
        self.device.pinned[address] = memory
        self.device.freed_pinned.discard(address)
        return OK, address

    def cudaMallocHost(self, size: int) -> tuple[cudaError_t, int]:
        return self.cudaHostAlloc(size, 0)

    def cudaFreeHost(self, ptr: Any) -> tuple[cudaError_t]:
        self._count("cudaFreeHost")
        if self.device.pinned.pop(int(ptr), None) is None:
            twice = int(ptr) in self.device.freed_pinned
            if twice and not self.device.enabled("double-free"):
                return (OK,)
            return (cudaError_t.cudaErrorInvalidValue,)
        self.device.freed_pinned.add(int(ptr))
        return (OK,)

    def cudaMemcpyAsync(
        self, dst: Any, src: Any, count: int, kind: cudaMemcpyKind, stream: Any
    ) -> tuple[cudaError_t]:
        self._count("cudaMemcpyAsync")
        device, count = self.device, int(count)
        dst, src = int(dst), int(src)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            target, error = device.device_bytes(dst, count)
            if target is None:
                return (cudaError_t(error),)
            source = device.host_bytes(src, count)

            def upload() -> int:
                live, problem = device.device_bytes(dst, count)
                if live is None:
                    return problem
                live[:] = source  # read from host memory when the copy runs, not when queued
                return OK

            return (cudaError_t(device.enqueue(stream, upload)),)
        if kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            origin, error = device.device_bytes(src, count)
            if origin is None:
                return (cudaError_t(error),)
            destination = device.host_bytes(dst, count)
            stream_state = device.stream(stream)
            if device.enabled("deferred") and stream_state is not None and stream_state.capture is None:
                destination[:] = POISON

            def download() -> int:
                live, problem = device.device_bytes(src, count)
                if live is None:
                    return problem
                destination[:] = live
                return OK

            return (cudaError_t(device.enqueue(stream, download)),)
        if kind == cudaMemcpyKind.cudaMemcpyDeviceToDevice:
            for address in (dst, src):
                checked, error = device.device_bytes(address, count)
                if checked is None:
                    return (cudaError_t(error),)

            def copy() -> int:
                to, problem = device.device_bytes(dst, count)
                origin, problem_from = device.device_bytes(src, count)
                if to is None or origin is None:
                    return problem if to is None else problem_from
                to[:] = origin
                return OK

            return (cudaError_t(device.enqueue(stream, copy)),)
        return (cudaError_t.cudaErrorInvalidValue,)

    def cudaStreamCreate(self) -> tuple[cudaError_t, cudaStream_t]:
        return self.cudaStreamCreateWithFlags(0)

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[cudaError_t, cudaStream_t]:
        self._count("cudaStreamCreate")
        handle = self.device._handle()
        self.device.streams[handle] = EmulatedStream()
        return OK, cudaStream_t(handle)

    def cudaStreamSynchronize(self, stream: Any) -> tuple[cudaError_t]:
        self._count("cudaStreamSynchronize")
        state = self.device.stream(stream)
        if state is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if state.capture is not None:
            state.capture_broken = True
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        work, state.queue = state.queue, []
        first_error = OK
        for op in work:
            error = op()
            if error != OK and first_error == OK:
                first_error = cudaError_t(error)
        done, state.on_complete = state.on_complete, []
        for callback in done:
            callback()
        return (first_error,)

    def cudaStreamDestroy(self, stream: Any) -> tuple[cudaError_t]:
        self._count("cudaStreamDestroy")
        state = self.device.streams.pop(int(stream), None)
        if state is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        for op in state.queue:  # CUDA finishes pending work before releasing the stream
            op()
        return (OK,)

    def cudaStreamBeginCapture(self, stream: Any, mode: cudaStreamCaptureMode) -> tuple[cudaError_t]:
        state = self.device.stream(stream)
        if state is None or state.capture is not None:
            return (cudaError_t.cudaErrorInvalidValue,)
        state.capture, state.capture_broken = [], False
        return (OK,)

    def cudaStreamIsCapturing(self, stream: Any) -> tuple[cudaError_t, cudaStreamCaptureStatus]:
        state = self.device.stream(stream)
        if state is None:
            return (
                cudaError_t.cudaErrorInvalidResourceHandle,
                cudaStreamCaptureStatus.cudaStreamCaptureStatusNone,
            )
        if state.capture is None:
            return OK, cudaStreamCaptureStatus.cudaStreamCaptureStatusNone
        return OK, cudaStreamCaptureStatus.cudaStreamCaptureStatusActive

    def cudaStreamEndCapture(self, stream: Any) -> tuple[cudaError_t, cudaGraph_t | None]:
        state = self.device.stream(stream)
        if state is None or state.capture is None:
            return cudaError_t.cudaErrorInvalidValue, None
        ops, state.capture = state.capture, None
        if state.capture_broken:
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        handle = self.device._handle()
        self.device.graphs[handle] = ops
        return OK, cudaGraph_t(handle)

    def cudaGraphInstantiate(self, graph: Any, flags: int) -> tuple[cudaError_t, cudaGraphExec_t | None]:
        self._count("cudaGraphInstantiate")
        ops = self.device.graphs.get(int(graph))
        if ops is None:
            return cudaError_t.cudaErrorInvalidValue, None
        handle = self.device._handle()
        self.device.execs[handle] = list(ops)
        return OK, cudaGraphExec_t(handle)

    def cudaGraphLaunch(self, graphExec: Any, stream: Any) -> tuple[cudaError_t]:
        self._count("cudaGraphLaunch")
        ops = self.device.execs.get(int(graphExec))
        if ops is None:
            return (cudaError_t.cudaErrorInvalidValue,)

        def replay() -> int:
            for op in ops:
                error = op()
                if error != OK:
                    return error
            return OK

        return (cudaError_t(self.device.enqueue(stream, replay)),)

    def cudaGraphDestroy(self, graph: Any) -> tuple[cudaError_t]:
        found = self.device.graphs.pop(int(graph), None)
        return (OK if found is not None else cudaError_t.cudaErrorInvalidValue,)

    def cudaGraphExecDestroy(self, graphExec: Any) -> tuple[cudaError_t]:
        self._count("cudaGraphExecDestroy")
        found = self.device.execs.pop(int(graphExec), None)
        return (OK if found is not None else cudaError_t.cudaErrorInvalidValue,)


# Module-level names of `cuda.bindings.runtime` besides its functions.
CONSTANTS: dict[str, Any] = {
    "cudaError_t": cudaError_t,
    "cudaMemcpyKind": cudaMemcpyKind,
    "cudaStreamCaptureMode": cudaStreamCaptureMode,
    "cudaStreamCaptureStatus": cudaStreamCaptureStatus,
    "cudaStream_t": cudaStream_t,
    "cudaGraph_t": cudaGraph_t,
    "cudaGraphExec_t": cudaGraphExec_t,
    "cudaDeviceProp": cudaDeviceProp,
    "cudaHostAllocDefault": 0,
    "cudaStreamNonBlocking": 1,
}


def functions(runtime: Runtime) -> dict[str, Callable[..., Any]]:
    """The emulated module's functions: every public `cuda*` method of `Runtime`."""
    return {name: getattr(runtime, name) for name in dir(Runtime) if name.startswith("cuda")}
