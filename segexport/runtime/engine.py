"""TensorRT engines at run time: vouched for by the manifest before deserializing, run with cuda-python.

An engine is native code for one TensorRT version and one GPU. Before a byte of it
reaches `deserialize_cuda_engine`, its sha256 must match the manifest and the
manifest's record must name this machine's TensorRT version and GPU (or the build
options that relax that: `--version-compatible`, `--hardware-compat ampere+`).

Like the rest of the runtime this module never imports torch. TensorRT cannot be
installed where segexport is developed, so the code that calls it is checked against
the bindings of every supported release by `make typecheck-trt` and executed only by
the tests marked `tensorrt`/`gpu` on machines that have them.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segexport.errors import SegexportError, UnavailableError, first_line
from segexport.runtime.artifacts import vouched_path

# Compute capability of the oldest architecture that `--hardware-compat ampere+` engines run on.
AMPERE = (8, 0)


def tensorrt_unavailable_reason() -> str | None:
    """Why `import tensorrt` would fail here, or None when it works."""
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed"
    try:
        importlib.import_module("tensorrt")
    except Exception as error:  # a broken install raises ImportError, OSError, ...
        return f"import tensorrt failed: {first_line(error)}"
    return None


def require_tensorrt() -> None:
    """Raise the one-line reason when TensorRT can't be imported.

    Callers then `import tensorrt as trt` themselves, a static import that
    `make typecheck-trt` checks against each release's real bindings.
    """
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise UnavailableError(f"TensorRT is not available on this machine ({reason})")


def import_cudart() -> Any:
    """cuda-python's runtime module: `cuda.bindings.runtime` (12.6+), `cuda.cudart` before."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise UnavailableError("cuda-python is not installed (pip install 'segexport[trt]')")


def cuda_call(cudart: Any, result: Any) -> Any:
    """Unwrap cuda-python's `(error, value...)` tuples, raising on any error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        name = getattr(error, "name", str(error))
        raise UnavailableError(f"CUDA call failed: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        major, minor = self.compute_capability
        return {"name": self.name, "compute_capability": f"{major}.{minor}"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuIdentity:
        major, minor = (int(part) for part in str(data["compute_capability"]).split("."))
        return cls(str(data["name"]), (major, minor))


def current_gpu(device: int = 0) -> GpuIdentity:
    cudart = import_cudart()
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return GpuIdentity(name.rstrip("\x00").strip(), (int(props.major), int(props.minor)))


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def compatibility_problem(record: dict[str, Any], tensorrt_version: str, gpu: GpuIdentity) -> str | None:
    """Why an engine built as `record` says must not be loaded here, or None.

    Plain engines need the exact TensorRT version and the same GPU model. Version-
    compatible engines (TensorRT >= 8.6) run on the release that built them or any later
    one, across major versions too (NVIDIA's "Version Compatibility" guide: 10.x engines
    run on 11.x). `ampere+` hardware-compatible engines run on compute capability >= 8.0.
    """
    built_with = str(record["tensorrt"])
    if record.get("version_compatible"):
        if _release(tensorrt_version) < _release(built_with):
            return (
                f"built version-compatible with TensorRT {built_with}; this machine has the older "
                f"{tensorrt_version} (such engines run on {built_with} or later)"
            )
    elif built_with != tensorrt_version:
        return (
            f"built with TensorRT {built_with}, this machine has {tensorrt_version}; engines run "
            "only on the TensorRT release that built them (rebuild here, or build with --version-compatible)"
        )
    built_gpu = GpuIdentity.from_dict(record["gpu"])
    if record.get("hardware_compat") == "ampere+":
        if gpu.compute_capability < AMPERE:
            return (
                f"built for Ampere and later GPUs; this {gpu.name} has compute capability "
                f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
            )
    elif built_gpu != gpu:
        return (
            f"built for {built_gpu.name} (sm {built_gpu.to_dict()['compute_capability']}), this machine has "
            f"{gpu.name} (sm {gpu.to_dict()['compute_capability']}); rebuild the engine on this device "
            "(or build with --hardware-compat ampere+)"
        )
    return None


def profile_problem(record: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Why input shapes fall outside the engine's optimization profile, or None."""
    for name, shape in shapes.items():
        profile = record["profile"].get(name)
        if profile is None:
            return f"the engine has no input {name!r}; it takes {', '.join(record['profile'])}"
        low, high = profile["min"], profile["max"]
        if len(shape) != len(low) or any(
            not lo <= s <= hi for s, lo, hi in zip(shape, low, high, strict=True)
        ):
            return (
                f"input {name} of shape {'x'.join(map(str, shape))} is outside the range the engine "
                f"was built for ({'x'.join(map(str, low))} .. {'x'.join(map(str, high))})"
            )
    return None


def engine_record(manifest: dict[str, Any], file_name: str) -> dict[str, Any]:
    record = manifest.get("engines", {}).get(file_name)
    if record is None:
        raise SegexportError(f"{file_name}: the manifest has no build record for it; refusing to load it")
    return dict(record)


def read_vouched_engine(
    directory: Path, file_name: str, manifest: dict[str, Any], tensorrt_version: str, gpu: GpuIdentity
) -> bytes:
    """The engine's bytes, only when the checksum and the build record both vouch for this machine."""
    path = vouched_path(directory, file_name, manifest)
    problem = compatibility_problem(engine_record(manifest, file_name), tensorrt_version, gpu)
    if problem:
        raise SegexportError(f"{path}: {problem}; refusing to deserialize it")
    return path.read_bytes()


_NUMPY_TYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}


def numpy_dtype(data_type: Any) -> np.dtype:
    """numpy type of a `trt.DataType` I/O tensor, by member name (stable across 10.x and 11.x)."""
    name = str(getattr(data_type, "name", data_type)).rsplit(".", 1)[-1]
    if name not in _NUMPY_TYPES:
        raise SegexportError(f"engine I/O of TensorRT type {name} is not supported by the runtime")
    return np.dtype(_NUMPY_TYPES[name])


class TensorRTRunner:
    """Runs a deserialized engine on one CUDA stream; device buffers grow as shapes need."""

    def __init__(self, engine_bytes: bytes, record: dict[str, Any], name: str = "tensorrt") -> None:
        require_tensorrt()
        import tensorrt as trt

        self._cudart = import_cudart()
        self._record = record
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if record.get("version_compatible"):
            # Version-compatible plans carry their own lean runtime, which is host code.
            self._runtime.engine_host_code_allowed = True
        if record.get("dla_core") is not None:
            self._runtime.DLA_core = int(record["dla_core"])
        engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            raise SegexportError(f"{name}: TensorRT could not deserialize the engine (see its log above)")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = cuda_call(self._cudart, self._cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.name = name

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def _device_buffer(self, tensor: str, nbytes: int) -> int:
        pointer, capacity = self._buffers.get(tensor, (0, 0))
        if capacity < nbytes:
            if pointer:
                cuda_call(self._cudart, self._cudart.cudaFree(pointer))
            pointer = int(cuda_call(self._cudart, self._cudart.cudaMalloc(max(nbytes, 1))))
            self._buffers[tensor] = (pointer, nbytes)
        return pointer

    def _copy(self, destination: int, source: int, nbytes: int, kind: Any) -> None:
        cuda_call(self._cudart, self._cudart.cudaMemcpyAsync(destination, source, nbytes, kind, self._stream))

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = sorted(set(self._inputs) - set(feeds))
        if missing:
            raise SegexportError(f"{self.name}: missing inputs {', '.join(missing)}")
        problem = profile_problem(self._record, {n: tuple(feeds[n].shape) for n in self._inputs})
        if problem:
            raise SegexportError(f"{self.name}: {problem}")
        cudart, context = self._cudart, self._context
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        staged = []  # keeps host arrays alive until the stream is synchronised
        for tensor in self._inputs:
            dtype = numpy_dtype(self._engine.get_tensor_dtype(tensor))
            host = np.ascontiguousarray(feeds[tensor], dtype=dtype)
            if not context.set_input_shape(tensor, tuple(host.shape)):
                raise SegexportError(f"{self.name}: TensorRT refused shape {host.shape} for {tensor}")
            pointer = self._device_buffer(tensor, host.nbytes)
            cuda_call(
                cudart,
                cudart.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes, to_device, self._stream),
            )
            context.set_tensor_address(tensor, pointer)
            staged.append(host)
        results: dict[str, np.ndarray] = {}
        for tensor in self._outputs:
            dtype = numpy_dtype(self._engine.get_tensor_dtype(tensor))
            results[tensor] = np.empty(tuple(context.get_tensor_shape(tensor)), dtype=dtype)
            context.set_tensor_address(tensor, self._device_buffer(tensor, results[tensor].nbytes))
        if not context.execute_async_v3(self._stream):
            raise SegexportError(f"{self.name}: TensorRT execution failed (see its log above)")
        for tensor, host in results.items():
            pointer = self._buffers[tensor][0]
            cuda_call(
                cudart, cudart.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, to_host, self._stream)
            )
        cuda_call(cudart, cudart.cudaStreamSynchronize(self._stream))
        return {tensor: host.astype(np.float32, copy=False) for tensor, host in results.items()}

    def close(self) -> None:
        for pointer, _ in self._buffers.values():
            cuda_call(self._cudart, self._cudart.cudaFree(pointer))
        self._buffers.clear()
        if self._stream is not None:
            cuda_call(self._cudart, self._cudart.cudaStreamDestroy(self._stream))
            self._stream = None


def open_engine_runner(directory: Path, file_name: str, manifest: dict[str, Any]) -> TensorRTRunner:
    """Check checksum, TensorRT version and GPU against the manifest, then deserialize."""
    require_tensorrt()
    import tensorrt as trt

    data = read_vouched_engine(directory, file_name, manifest, trt.__version__, current_gpu())
    return TensorRTRunner(data, engine_record(manifest, file_name), name=f"tensorrt:{file_name}")
