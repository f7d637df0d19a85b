"""TensorRT engines at run time: vouched for by the manifest before deserializing, run with cuda-python.

An engine is native code for one TensorRT version and one GPU. Before a byte of it
reaches `deserialize_cuda_engine`, its sha256 must match the manifest and the
manifest's record must name this machine's TensorRT version and GPU (or the build
options that relax that: `--version-compatible`, `--hardware-compat ampere+`). Those checks and
the record they read are `segexport.runtime.engine_records`, which needs no TensorRT.

`TensorRTRunner` is a `Runner` (`name`, `output_names`, `infer(feeds) -> outputs`) with a
streaming API for video:

* `submit(feeds) -> Frame` enqueues one frame (staging copy into pinned memory, upload,
  `execute_async_v3` or a CUDA graph replay, download) and returns at once;
  `result(frame) -> outputs` waits for that frame only (one stream synchronisation);
* `infer_stream(frames) -> iterator of outputs` keeps two frames in flight, so that the
  upload of frame n+1 overlaps the compute of frame n;
* `close()` (or `with`) releases every buffer, stream, graph and context exactly once.

Each frame in flight owns a slot: its own execution context, stream, device buffers and
pinned host buffers. TensorRT allows several contexts of one engine to run concurrently,
each on its own stream, and forbids using one context from two threads at a time
(TensorRT developer guide, "Thread Safety" and "Streaming"; `IExecutionContext` API docs).
Buffers are sized once, from the profile maximum (`reserve="max"`) or grown to the largest
shape seen (`reserve="grow"`): never allocated per call. With `cuda_graph=True` each slot
captures its whole frame (copies and `execute_async_v3`) into a CUDA graph after one plain
run at that shape, as TensorRT's "CUDA Graphs" section prescribes (the first `enqueueV3`
after a shape change does deferred work that must not be captured), re-captures when the
shape changes and falls back to plain enqueues, with the reason logged, when capture fails.

Like the rest of the runtime this module never imports torch. TensorRT cannot be
installed where segexport is developed, so the code that calls it is checked against
the bindings of every supported release by `make typecheck-trt`, and executed by the
tests against an emulator of TensorRT and CUDA (`tests/emulator/`) and, marked
`tensorrt`/`gpu`, on machines that have them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segexport.errors import SegexportError
from segexport.runtime.cuda import (
    Cuda,
    CudaError,
    CudaGraph,
    DeviceBuffer,
    PinnedBuffer,
    Stream,
    import_cudart,
)
from segexport.runtime.engine_records import (
    current_gpu,
    engine_record,
    profile_problem,
    read_vouched_engine,
    require_tensorrt,
)
from segexport.runtime.inputs import check_input_shapes

log = logging.getLogger(__name__)

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


Shape = tuple[int, ...]


def _tensorrt_logger() -> Any:
    """TensorRT's messages into Python logging, keeping the last error for our own error messages
    (TensorRT reports failures as a False/None result plus a log line)."""
    import tensorrt as trt

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.last_error = "no message from TensorRT"

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.last_error = msg
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return Logger()


@dataclass
class _Slot:
    """What one frame in flight owns: a context, a stream, and buffers at fixed addresses."""

    context: Any
    stream: Stream
    device: dict[str, DeviceBuffer] = field(default_factory=dict)
    host: dict[str, PinnedBuffer] = field(default_factory=dict)
    shapes: dict[str, Shape] = field(default_factory=dict)  # every I/O tensor's current shape
    views: dict[str, np.ndarray] = field(default_factory=dict)  # pinned arrays at those shapes
    warm: bool = False  # ran once at `shapes`: a graph may be captured now
    graph: CudaGraph | None = None
    in_flight: bool = False


@dataclass(frozen=True)
class Frame:
    """A submitted frame; `TensorRTRunner.result(frame)` waits for it."""

    slot: int
    sequence: int


class TensorRTRunner:
    """Runs a deserialized engine: pinned, preallocated buffers, one synchronisation per frame."""

    def __init__(
        self,
        engine_bytes: bytes,
        record: dict[str, Any],
        name: str = "tensorrt",
        *,
        outputs: Sequence[str] | None = None,
        cuda_graph: bool = False,
        reserve: Literal["max", "grow"] = "max",
        manifest: dict[str, Any] | None = None,
    ) -> None:
        require_tensorrt()
        import tensorrt as trt

        self.name = name
        self._record = record
        self._manifest = manifest  # its ranges and size rule are checked before each run
        self._closed = False
        self._slots: list[_Slot] = []
        self._logger = _tensorrt_logger()
        self._runtime = trt.Runtime(self._logger)
        if record.get("version_compatible"):
            # Version-compatible plans carry their own lean runtime, which is host code.
            self._runtime.engine_host_code_allowed = True
        if record.get("dla_core") is not None:
            self._runtime.DLA_core = int(record["dla_core"])
        engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            raise SegexportError(
                f"{name}: TensorRT could not deserialize the engine ({self._logger.last_error})"
            )
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._all_outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        unknown = sorted(set(outputs or ()) - set(self._all_outputs))
        if unknown:
            raise SegexportError(
                f"{name}: the engine has no output {', '.join(unknown)}; "
                f"it has {', '.join(self._all_outputs)}"
            )
        # Outputs nobody asked for stay on the device: TensorRT writes them, nothing copies them.
        self._outputs = list(outputs) if outputs else list(self._all_outputs)
        self._dtypes = {n: numpy_dtype(engine.get_tensor_dtype(n)) for n in names}
        self._cuda_graph = cuda_graph
        self._graph_failures: dict[str, str] = {}
        self._reserve = reserve
        self._sequence = 0
        self._cuda = Cuda(import_cudart())

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    # -- slots and buffers ------------------------------------------------------------------

    def _slot(self, index: int) -> _Slot:
        if self._closed:
            raise SegexportError(f"{self.name}: the runner is closed")
        while len(self._slots) <= index:
            slot = _Slot(self._engine.create_execution_context(), Stream(self._cuda))
            self._slots.append(slot)
            if self._reserve == "max":
                maximum = {n: tuple(self._engine.get_tensor_profile_shape(n, 0)[2]) for n in self._inputs}
                self._configure(slot, maximum)
        return self._slots[index]

    def _configure(self, slot: _Slot, shapes: dict[str, Shape]) -> None:
        """Give the context these input shapes; (re)allocate only buffers that are too small."""
        context = slot.context
        for tensor, shape in shapes.items():
            if not context.set_input_shape(tensor, shape):
                raise SegexportError(
                    f"{self.name}: TensorRT refused shape {shape} for {tensor} ({self._logger.last_error})"
                )
        every = dict(shapes)
        for tensor in self._all_outputs:
            shape = tuple(context.get_tensor_shape(tensor))
            if any(d < 0 for d in shape):
                raise SegexportError(f"{self.name}: output {tensor} has a data-dependent shape {shape}")
            every[tensor] = shape
        for tensor, shape in every.items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * self._dtypes[tensor].itemsize
            if tensor not in slot.device or slot.device[tensor].nbytes < nbytes:
                self._grow(slot, tensor, nbytes)
            if tensor in self._inputs or tensor in self._outputs:
                slot.views[tensor] = slot.host[tensor].array(shape, self._dtypes[tensor])
        if every != slot.shapes:
            self._drop_graph(slot)
        slot.shapes = every

    def _grow(self, slot: _Slot, tensor: str, nbytes: int) -> None:
        for buffers in (slot.device, slot.host):
            old = buffers.pop(tensor, None)
            if old is not None:
                old.free()
        slot.device[tensor] = DeviceBuffer(self._cuda, nbytes)
        if tensor in self._inputs or tensor in self._outputs:
            slot.host[tensor] = PinnedBuffer(self._cuda, nbytes)
        if not slot.context.set_tensor_address(tensor, slot.device[tensor].pointer):
            raise SegexportError(f"{self.name}: TensorRT refused the address of {tensor}")
        self._drop_graph(slot)  # a captured graph holds the old address

    def _drop_graph(self, slot: _Slot) -> None:
        slot.warm = False
        if slot.graph is not None:
            graph, slot.graph = slot.graph, None
            graph.destroy()

    # -- one frame ------------------------------------------------------------------------------

    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, Shape]:
        missing = sorted(set(self._inputs) - set(feeds))
        if missing:
            raise SegexportError(f"{self.name}: missing inputs {', '.join(missing)}")
        shapes = {n: tuple(int(d) for d in np.shape(feeds[n])) for n in self._inputs}
        problem = profile_problem(self._record, shapes)
        if problem:
            raise SegexportError(f"{self.name}: {problem}")
        if self._manifest is not None:
            check_input_shapes(self._manifest, shapes, self.name)
        return shapes

    def _enqueue(self, slot: _Slot) -> None:
        """Upload, execute, download on the slot's stream: the work a graph captures."""
        for tensor in self._inputs:
            view = slot.views[tensor]
            slot.stream.copy_to_device(slot.device[tensor].pointer, slot.host[tensor].pointer, view.nbytes)
        if not slot.context.execute_async_v3(int(slot.stream)):
            raise SegexportError(f"{self.name}: TensorRT execution failed ({self._logger.last_error})")
        for tensor in self._outputs:
            view = slot.views[tensor]
            slot.stream.copy_to_host(slot.host[tensor].pointer, slot.device[tensor].pointer, view.nbytes)

    def _capture(self, slot: _Slot) -> None:
        try:
            slot.graph = CudaGraph(self._cuda, slot.stream, lambda: self._enqueue(slot))
        except (CudaError, SegexportError) as error:
            key = self._shape_key(slot.shapes)
            self._graph_failures[key] = str(error)
            log.warning("%s: CUDA graph capture failed at %s, running without one: %s", self.name, key, error)

    def _shape_key(self, shapes: dict[str, Shape]) -> str:
        return ", ".join(f"{n} {'x'.join(map(str, shapes[n]))}" for n in self._inputs)

    @property
    def graph_failures(self) -> dict[str, str]:
        """Input shapes whose capture failed, with the reason (those frames run without a graph)."""
        return dict(self._graph_failures)

    def submit(self, feeds: dict[str, np.ndarray], slot_index: int | None = None) -> Frame:
        """Enqueue one frame and return at once; `result(frame)` collects it."""
        shapes = self._check_feeds(feeds)
        index = self._sequence % 2 if slot_index is None else slot_index
        slot = self._slot(index)
        if slot.in_flight:
            raise SegexportError(f"{self.name}: slot {index} still holds a frame; call result() first")
        if any(slot.shapes.get(n) != s for n, s in shapes.items()):
            self._configure(slot, shapes)
        for tensor in self._inputs:
            np.copyto(slot.views[tensor], feeds[tensor], casting="same_kind")
        wants_graph = self._cuda_graph and slot.warm and slot.graph is None
        if wants_graph and self._shape_key(slot.shapes) not in self._graph_failures:
            self._capture(slot)
        if slot.graph is not None:
            slot.graph.launch()
        else:
            self._enqueue(slot)
        slot.warm = True
        slot.in_flight = True
        self._sequence += 1
        return Frame(index, self._sequence)

    def result(self, frame: Frame) -> dict[str, np.ndarray]:
        """Wait for one frame (its stream only) and copy its outputs out of pinned memory.

        FP16 outputs become float32 here, in the one copy every output needs anyway.
        """
        if self._closed:
            raise SegexportError(f"{self.name}: the runner is closed")
        slot = self._slots[frame.slot]
        if not slot.in_flight:
            raise SegexportError(f"{self.name}: that frame's results were already collected")
        slot.stream.synchronize()
        slot.in_flight = False
        results = {}
        for tensor in self._outputs:
            view = slot.views[tensor]
            results[tensor] = view.astype(np.float32) if view.dtype == np.float16 else view.copy()
        return results

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.result(self.submit(feeds, slot_index=0))

    def infer_stream(self, frames: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """Outputs of each frame, in order, with the next frame already on the GPU."""
        pending: deque[Frame] = deque()
        try:
            for feeds in frames:
                pending.append(self.submit(feeds))
                if len(pending) == 2:
                    yield self.result(pending.popleft())
            while pending:
                yield self.result(pending.popleft())
        finally:
            for frame in pending:  # an abandoned stream: wait so buffers can be reused or freed
                self._slots[frame.slot].stream.synchronize()
                self._slots[frame.slot].in_flight = False

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Release everything once; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for slot in self._slots:
            buffers: list[DeviceBuffer | PinnedBuffer] = [*slot.device.values(), *slot.host.values()]
            steps: list[Callable[[], None]] = [slot.stream.synchronize, partial(self._drop_graph, slot)]
            steps += [buffer.free for buffer in buffers]
            steps.append(slot.stream.destroy)
            for step in steps:
                try:
                    step()
                except CudaError as error:  # keep releasing the rest
                    errors.append(str(error))
            slot.context = None
        self._slots.clear()
        if errors:
            raise CudaError(f"{self.name}: closing failed: {'; '.join(errors)}")

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_engine_runner(
    directory: Path,
    file_name: str,
    manifest: dict[str, Any],
    *,
    outputs: Sequence[str] | None = None,
    cuda_graph: bool = False,
    reserve: Literal["max", "grow"] = "max",
) -> TensorRTRunner:
    """Check checksum, TensorRT version and GPU against the manifest, then deserialize."""
    require_tensorrt()
    import tensorrt as trt

    data = read_vouched_engine(directory, file_name, manifest, trt.__version__, current_gpu())
    return TensorRTRunner(
        data,
        engine_record(manifest, file_name),
        name=f"tensorrt:{file_name}",
        outputs=outputs,
        cuda_graph=cuda_graph,
        reserve=reserve,
        manifest=manifest,
    )
