"""The emulated `tensorrt` module: an "engine" is an ONNX graph and its profile, run by ONNX Runtime.

The classes carry TensorRT's names and the methods the runtime calls, with the bindings'
parameter names (checked against the stubs `make typecheck-trt` generates). Execution goes
through an executor: the emulated device (work deferred until the stream is synchronised) or,
on a GPU machine without TensorRT, the real CUDA runtime.
"""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from tests.emulator.device import OK, Device, Misuse, cudaError_t

MAGIC = b"SEGEXPORT-EMULATED-ENGINE\n"


def engine_bytes(onnx_model: bytes, profile: dict[str, dict[str, list[int]]]) -> bytes:
    """A serialized emulated engine: the ONNX graph and the optimization profile it was 'built' for."""
    return MAGIC + json.dumps({"profile": profile}).encode() + b"\n" + onnx_model


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


_FROM_ONNX = {
    onnx.TensorProto.FLOAT: (DataType.FLOAT, np.float32),
    onnx.TensorProto.FLOAT16: (DataType.HALF, np.float16),
    onnx.TensorProto.INT8: (DataType.INT8, np.int8),
    onnx.TensorProto.UINT8: (DataType.UINT8, np.uint8),
    onnx.TensorProto.INT32: (DataType.INT32, np.int32),
    onnx.TensorProto.INT64: (DataType.INT64, np.int64),
    onnx.TensorProto.BOOL: (DataType.BOOL, np.bool_),
}


class Dims(tuple):  # type: ignore[type-arg]
    """TensorRT's Dims: a sequence of ints; -1 marks a dimension not known yet."""


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE

    def __init__(self) -> None:
        self.messages: list[str] = []

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        self.messages.append(msg)


class Logger(ILogger):
    def __init__(self, min_severity: ILogger.Severity = ILogger.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity


class Runtime:
    _executor: Any = None  # set on the per-install subclass (module_attributes)

    def __init__(self, logger: ILogger) -> None:
        self._logger = logger
        self.engine_host_code_allowed = False
        self.DLA_core = -1

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        data = bytes(serialized_engine)
        if not data.startswith(MAGIC):
            self._logger.log(
                ILogger.Severity.ERROR,
                "1: [runtime.cpp::parsePlan] Error Code 1: Serialization (not an engine)",
            )
            return None
        header, model = data[len(MAGIC) :].split(b"\n", 1)
        return ICudaEngine(model, json.loads(header)["profile"], self._logger, self._executor)


class ICudaEngine:
    def __init__(self, model: bytes, profile: dict[str, Any], logger: ILogger, executor: Any) -> None:
        graph = onnx.load_from_string(model).graph
        self._profile = profile
        self._logger = logger
        self._executor = executor
        self._session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self._io: list[tuple[str, TensorIOMode, DataType, type]] = []
        for mode, values in ((TensorIOMode.INPUT, graph.input), (TensorIOMode.OUTPUT, graph.output)):
            for value in values:
                data_type, dtype = _FROM_ONNX[value.type.tensor_type.elem_type]
                self._io.append((value.name, mode, data_type, dtype))
        self._identity = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}
        self._identity_only = len(graph.node) == len(self._identity)
        self._shape_cache: dict[tuple[Any, ...], dict[str, Dims]] = {}
        self._model = model

    def create_engine_inspector(self) -> EngineInspector:
        return EngineInspector(self._model)

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]

    def _entry(self, name: str) -> tuple[str, TensorIOMode, DataType, type]:
        for entry in self._io:
            if entry[0] == name:
                return entry
        raise KeyError(name)

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._entry(name)[1]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._entry(name)[2]

    def _numpy_type(self, name: str) -> type:
        return self._entry(name)[3]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        shapes = self._profile[name]
        return [Dims(shapes[key]) for key in ("min", "opt", "max")]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)

    def _inputs(self) -> list[str]:
        return [name for name, mode, _, _ in self._io if mode == TensorIOMode.INPUT]

    def _outputs(self) -> list[str]:
        return [name for name, mode, _, _ in self._io if mode == TensorIOMode.OUTPUT]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(None, feeds)
        return dict(zip([o.name for o in self._session.get_outputs()], values, strict=True))

    def _output_shapes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, Dims]:
        key = tuple(sorted(shapes.items()))
        if key not in self._shape_cache:
            zeros = {n: np.zeros(s, self._numpy_type(n)) for n, s in shapes.items()}
            self._shape_cache[key] = {n: Dims(v.shape) for n, v in self._run(zeros).items()}
        return self._shape_cache[key]


class ProfilingVerbosity(enum.IntEnum):
    LAYER_NAMES_ONLY = 0
    NONE = 1
    DETAILED = 2


class LayerInformationFormat(enum.IntEnum):
    ONELINE = 0
    JSON = 1


# TensorRT's DETAILED `Format/Datatype` wording, by the ONNX element type of a layer's output.
_FORMAT_TEXT = {
    onnx.TensorProto.FLOAT: "Row major linear FP32",
    onnx.TensorProto.FLOAT16: "Row major linear FP16 format",
    onnx.TensorProto.INT8: "Row major linear Int8 format",
    onnx.TensorProto.INT64: "Row major linear Int64 format",
}


class EngineInspector:
    """Each ONNX node is a 'layer'; its output's element type is the precision it runs in."""

    def __init__(self, model: bytes) -> None:
        self._model = model

    def get_engine_information(self, format: LayerInformationFormat) -> str:
        inferred = onnx.shape_inference.infer_shapes(onnx.load_from_string(self._model)).graph
        types = {
            value.name: value.type.tensor_type.elem_type
            for value in [*inferred.input, *inferred.value_info, *inferred.output]
        }
        layers = [
            {
                "Name": node.name or f"{node.op_type}_{index}",
                "LayerType": node.op_type,
                "Outputs": [
                    {"Name": out, "Format/Datatype": _FORMAT_TEXT.get(types.get(out, 0), "Unknown format")}
                    for out in node.output
                ],
            }
            for index, node in enumerate(inferred.node)
        ]
        if format == LayerInformationFormat.JSON:
            return json.dumps({"Layers": layers, "Bindings": [i.name for i in inferred.input]})
        return "\n".join(layer["Name"] for layer in layers)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        self._dirty = True  # shapes changed since the last plain execute_async_v3
        self._owner: int | None = None
        self.executions = 0

    def _use(self) -> None:
        """One thread at a time: from a call until the work it enqueued has completed."""
        device = self.engine._executor.device
        if device is None or not device.enabled("threads"):
            return
        me = threading.get_ident()
        if self._owner is not None and self._owner != me:
            raise Misuse(
                "threads", "an IExecutionContext is used from a second thread while its work is in flight"
            )
        self._owner = me

    def _release(self) -> None:
        self._owner = None

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        self._use()
        profile = self.engine._profile[name]
        shape = tuple(int(d) for d in shape)
        low, high = profile["min"], profile["max"]
        if len(shape) != len(low) or not all(
            lo <= s <= hi for s, lo, hi in zip(shape, low, high, strict=True)
        ):
            self.engine._logger.log(
                ILogger.Severity.ERROR, f"3: [executionContext::setInputShape] {name} {shape} out of profile"
            )
            return False
        if self._shapes.get(name) != shape:
            self._dirty = True
        self._shapes[name] = shape
        return True

    def _input_shapes(self) -> dict[str, tuple[int, ...]] | None:
        shapes = {n: self._shapes.get(n) for n in self.engine._inputs()}
        if any(s is None for s in shapes.values()):
            return None
        return {n: s for n, s in shapes.items() if s is not None}

    def get_tensor_shape(self, name: str) -> Dims:
        if self.engine.get_tensor_mode(name) == TensorIOMode.INPUT:
            return Dims(self._shapes.get(name, [-1] * len(self.engine._profile[name]["min"])))
        shapes = self._input_shapes()
        if shapes is None:
            return Dims([-1])
        return self.engine._output_shapes(shapes)[name]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._use()
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def execute_async_v3(self, stream_handle: int) -> bool:
        self._use()
        executor, log = self.engine._executor, self.engine._logger
        device = executor.device
        shapes = self._input_shapes()
        if shapes is None:
            if device is None or device.enabled("shapes"):
                log.log(
                    ILogger.Severity.ERROR,
                    "3: [executionContext::enqueueV3] Error: not all input dimensions specified",
                )
                return False
            shapes = {n: tuple(self.engine._profile[n]["opt"]) for n in self.engine._inputs()}
        names = self.engine._inputs() + self.engine._outputs()
        unset = [n for n in names if not self._addresses.get(n)]
        if unset and (device is None or device.enabled("address")):
            log.log(
                ILogger.Severity.ERROR, f"3: [executionContext::enqueueV3] Error: address of {unset} not set"
            )
            return False
        capturing = executor.capturing(stream_handle)
        if capturing and self._dirty and (device is None or device.enabled("warmup")):
            log.log(
                ILogger.Severity.ERROR,
                "1: [executionContext::enqueueV3] Error: shape changed since the last enqueueV3; "
                "call enqueueV3 once before capturing",
            )
            return False
        if not capturing:
            self._dirty = False
        self.executions += 1
        plan = {n: (self._addresses.get(n, 0), shapes.get(n)) for n in names}
        for name in self.engine._outputs():
            plan[name] = (plan[name][0], tuple(self.engine._output_shapes(shapes)[name]))
        return bool(executor.execute(self, stream_handle, plan))


class EmulatedExecutor:
    """Runs engines on the emulated device: the ONNX graph runs when the stream is synchronised."""

    def __init__(self, device: Device, cudart: Any) -> None:
        self.device = device

    def capturing(self, stream_handle: int) -> bool:
        stream = self.device.stream(stream_handle)
        return stream is not None and stream.capture is not None

    def execute(self, context: IExecutionContext, stream_handle: int, plan: dict[str, Any]) -> bool:
        engine, device = context.engine, self.device

        def run() -> int:
            feeds = {}
            for name in engine._inputs():
                address, shape = plan[name]
                dtype = np.dtype(engine._numpy_type(name))
                raw, error = device.device_bytes(address, int(np.prod(shape)) * dtype.itemsize)
                if raw is None:
                    return error
                feeds[name] = raw.view(dtype).reshape(shape).copy()
            for name, value in engine._run(feeds).items():
                address, _ = plan[name]
                raw, error = device.device_bytes(address, value.nbytes)
                if raw is None:
                    if device.enabled("address"):
                        return error if error != OK else cudaError_t.cudaErrorIllegalAddress
                    continue
                raw[:] = np.ascontiguousarray(value).view(np.uint8).reshape(-1)
            return OK

        stream = device.stream(stream_handle)
        if stream is None:
            return False
        if stream.capture is None:
            stream.on_complete.append(context._release)
        else:
            context._release()
        return device.enqueue(stream_handle, run) == OK


class RealCudaExecutor:
    """Runs engines with the real CUDA runtime (GPU machines without TensorRT).

    An engine whose outputs are Identity of its inputs is a device-to-device copy on the stream,
    so the runner's copy path, streams and CUDA graphs run for real; other graphs synchronise,
    run in ONNX Runtime on the host and upload, and refuse to be captured.
    """

    device = None

    def __init__(self, device: Device | None, cudart: Any) -> None:
        self.rt = cudart

    def capturing(self, stream_handle: int) -> bool:
        error, status = self.rt.cudaStreamIsCapturing(stream_handle)
        return int(error) == 0 and int(status) != 0

    def execute(self, context: IExecutionContext, stream_handle: int, plan: dict[str, Any]) -> bool:
        rt, engine = self.rt, context.engine
        nbytes = {n: int(np.prod(s)) * np.dtype(engine._numpy_type(n)).itemsize for n, (_, s) in plan.items()}
        if engine._identity_only:
            kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
            for output, source in engine._identity.items():
                error, *_ = rt.cudaMemcpyAsync(
                    plan[output][0], plan[source][0], nbytes[output], kind, stream_handle
                )
                if int(error) != 0:
                    return False
            return True
        if self.capturing(stream_handle):
            engine._logger.log(
                ILogger.Severity.ERROR, "emulated engine: only Identity graphs can be captured on real CUDA"
            )
            return False
        (error,) = rt.cudaStreamSynchronize(stream_handle)
        if int(error) != 0:
            return False
        feeds = {}
        for name in engine._inputs():
            address, shape = plan[name]
            host = np.empty(shape, engine._numpy_type(name))
            (error,) = rt.cudaMemcpy(
                host.ctypes.data, address, host.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
            )
            if int(error) != 0:
                return False
            feeds[name] = host
        for name, value in engine._run(feeds).items():
            value = np.ascontiguousarray(value)
            to_device = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
            (error,) = rt.cudaMemcpy(plan[name][0], value.ctypes.data, value.nbytes, to_device)
            if int(error) != 0:
                return False
        return True


# -- the builder: `segexport trt`'s calls; a "build" checks the ONNX and records the profile ----------


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class BuilderFlag(enum.IntEnum):
    GPU_FALLBACK = 4
    VERSION_COMPATIBLE = 16


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class DeviceType(enum.IntEnum):
    GPU = 0
    DLA = 1


class HardwareCompatibilityLevel(enum.IntEnum):
    NONE = 0
    AMPERE_PLUS = 1


class IHostMemory:
    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    def __bytes__(self) -> bytes:
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)


class ITimingCache:
    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    def serialize(self) -> IHostMemory:
        return IHostMemory(self._data)


class IOptimizationProfile:
    def __init__(self) -> None:
        self._shapes: dict[str, dict[str, list[int]]] = {}

    def set_shape(self, input: str, min: Sequence[int], opt: Sequence[int], max: Sequence[int]) -> None:
        self._shapes[input] = {"min": list(min), "opt": list(opt), "max": list(max)}


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self._flags = flags
        self._model: bytes | None = None


class ParserError:
    def __init__(self, message: str, node: int = -1, name: str = "", operator: str = "") -> None:
        self._message, self._node, self._name, self._operator = message, node, name, operator

    def desc(self) -> str:
        return self._message

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._operator


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self._network = network
        self._errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        try:
            proto = onnx.load(model)
            onnx.checker.check_model(proto, full_check=True)
        except Exception as error:  # onnx's own error types
            self._errors.append(ParserError(str(error).splitlines()[0]))
            return False
        self._network._model = proto.SerializeToString()
        return True


class IProgressMonitor:
    def __init__(self) -> None:
        pass

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        pass

    def step_complete(self, phase_name: str, step: int) -> bool:
        return True

    def phase_finish(self, phase_name: str) -> None:
        pass


class IBuilderConfig:
    builder_optimization_level: int = 3
    default_device_type: DeviceType = DeviceType.GPU
    DLA_core: int = -1
    hardware_compatibility_level: HardwareCompatibilityLevel = HardwareCompatibilityLevel.NONE
    progress_monitor: IProgressMonitor | None = None
    profiling_verbosity: ProfilingVerbosity = ProfilingVerbosity.LAYER_NAMES_ONLY

    def __init__(self) -> None:
        self._profiles: list[IOptimizationProfile] = []
        self._flags: set[BuilderFlag] = set()
        self._pools: dict[MemoryPoolType, int] = {}
        self._timing_cache = ITimingCache(b"")

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self._pools[pool] = int(pool_size)

    def set_flag(self, flag: BuilderFlag) -> None:
        self._flags.add(flag)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        return self._timing_cache


class Builder:
    def __init__(self, logger: ILogger) -> None:
        self._logger = logger

    @property
    def num_DLA_cores(self) -> int:
        return 0

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(
        self, network: INetworkDefinition, config: IBuilderConfig
    ) -> IHostMemory | None:
        """A plan only when every dynamic input has a profile, as TensorRT requires."""
        if network._model is None:
            self._logger.log(ILogger.ERROR, "4: [network.cpp::validate] no layers (nothing parsed)")
            return None
        graph = onnx.load_from_string(network._model).graph
        shapes = config._profiles[0]._shapes if config._profiles else {}
        missing = [i.name for i in graph.input if i.name not in shapes]
        if missing:
            self._logger.log(
                ILogger.ERROR, f"4: [network.cpp::validate] no optimization profile shapes for {missing}"
            )
            return None
        monitor = config.progress_monitor
        if monitor is not None:
            monitor.phase_start("Building engine (emulated)", None, 1)
            monitor.step_complete("Building engine (emulated)", 0)
            monitor.phase_finish("Building engine (emulated)")
        config._timing_cache = ITimingCache(config._timing_cache._data + b"emulated timing entry\n")
        return IHostMemory(engine_bytes(network._model, shapes))


def module_attributes(version: str, executor: Any) -> dict[str, Any]:
    """The fake module's names; its `Runtime` deserializes engines that run on `executor`."""
    bound = type("Runtime", (Runtime,), {"_executor": executor})
    return {
        "__version__": version,
        "ILogger": ILogger,
        "Logger": Logger,
        "Runtime": bound,
        "ICudaEngine": ICudaEngine,
        "IExecutionContext": IExecutionContext,
        "DataType": DataType,
        "TensorIOMode": TensorIOMode,
        "Dims": Dims,
        "Builder": Builder,
        "BuilderFlag": BuilderFlag,
        "DeviceType": DeviceType,
        "HardwareCompatibilityLevel": HardwareCompatibilityLevel,
        "IBuilderConfig": IBuilderConfig,
        "IHostMemory": IHostMemory,
        "INetworkDefinition": INetworkDefinition,
        "IOptimizationProfile": IOptimizationProfile,
        "IProgressMonitor": IProgressMonitor,
        "EngineInspector": EngineInspector,
        "LayerInformationFormat": LayerInformationFormat,
        "ProfilingVerbosity": ProfilingVerbosity,
        "ITimingCache": ITimingCache,
        "MemoryPoolType": MemoryPoolType,
        "NetworkDefinitionCreationFlag": NetworkDefinitionCreationFlag,
        "OnnxParser": OnnxParser,
        "ParserError": ParserError,
    }
