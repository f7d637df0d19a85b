"""The TensorRT runner against ONNX Runtime: on the emulator everywhere, on real CUDA with `-m gpu`.

Every test takes the `backend` fixture: `emulated` (fake TensorRT and CUDA, in CI), `cuda`
(fake TensorRT on the real CUDA runtime: pinned memory, streams and graphs for real; marked
`gpu`) and `tensorrt` (real TensorRT engines built from the same ONNX; marked `gpu` and
`tensorrt`). The tests are the same for all three; what differs is declared by the backend
(which graphs a fake engine can capture on real CUDA, how close a real engine must be).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from segexport.errors import SegexportError
from segexport.runtime import engine
from segexport.runtime.cuda import Cuda, CudaError
from segexport.runtime.engine import TensorRTRunner
from segexport.runtime.engine_records import tensorrt_unavailable_reason
from segexport.runtime.preprocessing import preprocess
from segexport.zoo.registry import IMAGENET_MEAN, IMAGENET_STD
from tests.emulator import engine_bytes, install
from tests.emulator.models import MODELS, EngineModel, frame


class CallLog:
    """A cudart module that records every `cuda*` call it forwards, for counting and ordering."""

    def __init__(self, cudart: Any) -> None:
        self._rt = cudart
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._rt, name)
        if not name.startswith("cuda") or isinstance(value, type) or not callable(value):
            return value

        def logged(*args: Any) -> Any:
            self.calls.append((name, args))
            return value(*args)

        return logged

    def count(self, name: str) -> int:
        return sum(1 for call, _ in self.calls if call == name)

    def downloaded_bytes(self) -> int:
        return self._copied(self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)

    def uploaded_bytes(self) -> int:
        return self._copied(self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice)

    def _copied(self, kind: Any) -> int:
        return sum(int(args[2]) for call, args in self.calls if call == "cudaMemcpyAsync" and args[3] == kind)


@dataclass
class Backend:
    name: str
    log: CallLog
    make_engine: Callable[[EngineModel], bytes]
    device: Any = None
    tolerance: float = 0.0  # relative L2 against ONNX Runtime
    runners: list[TensorRTRunner] = field(default_factory=list)

    def runner(self, model: EngineModel, **options: Any) -> TensorRTRunner:
        record = {"profile": model.profile}
        runner = TensorRTRunner(self.make_engine(model), record, name=f"{self.name}:{model.name}", **options)
        self.runners.append(runner)
        return runner

    def capturable(self, model: EngineModel) -> bool:
        """Whether the engine's work can be captured: fake engines on real CUDA only when they
        are device copies (others synchronise and run on the host)."""
        return self.name != "cuda" or model.name == "identity"

    def assert_matches(
        self, actual: dict[str, np.ndarray], model: EngineModel, feeds: dict[str, np.ndarray]
    ) -> None:
        session = ort.InferenceSession(model.onnx, providers=["CPUExecutionProvider"])
        expected = dict(zip(model.outputs, session.run(None, feeds), strict=True))
        for name, value in actual.items():
            reference = expected[name]
            assert value.shape == reference.shape, name
            if reference.dtype == np.uint8:
                agreement = float(np.mean(value == reference))
                assert agreement >= (1.0 if self.tolerance == 0 else 0.99), (name, agreement)
                continue
            reference = reference.astype(np.float32)
            error = np.linalg.norm(value - reference) / max(float(np.linalg.norm(reference)), 1e-12)
            assert error <= self.tolerance, (name, error)


def _real_cuda() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError as error:
        pytest.skip(f"needs cuda-python (cuda.bindings): {error}")
    status, count = runtime.cudaGetDeviceCount()
    if int(status) != 0 or not count:
        pytest.skip(f"needs a CUDA GPU: cudaGetDeviceCount says {getattr(status, 'name', status)}")
    return runtime


def _tensorrt_engine(tmp_path: Path) -> Callable[[EngineModel], bytes]:
    reason = tensorrt_unavailable_reason()
    if reason:
        pytest.skip(f"needs TensorRT: {reason}")
    from segexport.build import BuildOptions, build_engine

    def build(model: EngineModel) -> bytes:
        source = tmp_path / f"{model.name}.onnx"
        source.write_bytes(model.onnx)
        return build_engine(source, model.profile, BuildOptions(precision="fp32"), say=lambda _: None)

    return build


@pytest.fixture(
    params=[
        "emulated",
        pytest.param("cuda", marks=pytest.mark.gpu),
        pytest.param("tensorrt", marks=[pytest.mark.gpu, pytest.mark.tensorrt]),
    ]
)
def backend(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Backend]:
    kind = request.param
    if kind == "emulated":
        emulator = install(monkeypatch)
        chosen = Backend(
            kind, CallLog(emulator.cudart), lambda m: engine_bytes(m.onnx, m.profile), emulator.device
        )
    elif kind == "cuda":
        runtime = _real_cuda()
        install(monkeypatch, cuda=runtime)
        chosen = Backend(kind, CallLog(runtime), lambda m: engine_bytes(m.onnx, m.profile))
    else:
        runtime = _real_cuda()
        chosen = Backend(kind, CallLog(runtime), _tensorrt_engine(tmp_path), tolerance=1e-2)
    monkeypatch.setattr(engine, "import_cudart", lambda: chosen.log)
    yield chosen
    for runner in chosen.runners:
        runner.close()


SHAPES = [(1, 3, 8, 8), (1, 3, 16, 16), (4, 3, 32, 48), (3, 3, 24, 40), (1, 3, 32, 8)]


@pytest.mark.parametrize("reserve", ["max", "grow"])
def test_shapes_across_the_profile_match_onnx_runtime(backend: Backend, reserve: str) -> None:
    model = MODELS["conv"]()
    runner = backend.runner(model, reserve=reserve)
    for seed, shape in enumerate(SHAPES):
        feeds = frame(shape, seed)
        backend.assert_matches(runner.infer(feeds), model, feeds)


def test_buffers_are_sized_once_from_the_profile_maximum(backend: Backend) -> None:
    runner = backend.runner(MODELS["conv"]())
    runner.infer(frame((1, 3, 8, 8), 0))
    allocations = backend.log.count("cudaMalloc"), backend.log.count("cudaHostAlloc")
    assert allocations[0] >= 3 and allocations[1] >= 3  # image, logits, mask
    for seed, shape in enumerate(SHAPES):
        runner.infer(frame(shape, seed))
    assert (backend.log.count("cudaMalloc"), backend.log.count("cudaHostAlloc")) == allocations


def test_batch_growth_allocates_only_when_a_frame_is_larger(backend: Backend) -> None:
    model = MODELS["conv"]()
    runner = backend.runner(model, reserve="grow")
    grew = []
    for seed, batch in enumerate([1, 1, 2, 2, 1, 4, 3, 4]):
        before = backend.log.count("cudaMalloc")
        feeds = frame((batch, 3, 16, 16), seed)
        backend.assert_matches(runner.infer(feeds), model, feeds)
        grew.append(backend.log.count("cudaMalloc") > before)
    assert grew == [True, False, True, False, False, True, False, False]


def test_one_synchronisation_and_one_copy_per_tensor_per_frame(backend: Backend) -> None:
    runner = backend.runner(MODELS["conv"]())
    runner.infer(frame((2, 3, 16, 16), 0))
    syncs, copies = backend.log.count("cudaStreamSynchronize"), backend.log.count("cudaMemcpyAsync")
    for seed in range(1, 5):
        runner.infer(frame((2, 3, 16, 16), seed))
    assert backend.log.count("cudaStreamSynchronize") - syncs == 4
    assert backend.log.count("cudaMemcpyAsync") - copies == 4 * 3  # image up, logits and mask down


def test_stream_overlaps_the_next_upload_with_the_current_frame(backend: Backend) -> None:
    model = MODELS["conv"]()
    runner = backend.runner(model)
    frames = [frame((2, 3, 16, 24), seed) for seed in range(6)]
    start = len(backend.log.calls)
    results = list(runner.infer_stream(iter(frames)))
    assert len(results) == len(frames)
    for feeds, outputs in zip(frames, results, strict=True):
        backend.assert_matches(outputs, model, feeds)
    calls = backend.log.calls[start:]
    to_device = backend.log._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
    uploads = [
        (i, int(a[4])) for i, (name, a) in enumerate(calls) if name == "cudaMemcpyAsync" and a[3] == to_device
    ]
    syncs = [(i, int(a[0])) for i, (name, a) in enumerate(calls) if name == "cudaStreamSynchronize"]
    assert len({stream for _, stream in uploads}) == 2, "two slots, two streams"
    # Frame 2's upload is enqueued before frame 1 is waited for, on the other stream.
    assert uploads[1][0] < syncs[0][0] and uploads[1][1] != syncs[0][1]
    assert len(syncs) == len(frames)


@pytest.mark.parametrize("model_name", ["identity", "conv"])
def test_cuda_graph_replays_and_recaptures_when_the_shape_changes(
    backend: Backend, model_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = MODELS[model_name]()
    runner = backend.runner(model, cuda_graph=True)
    shapes = [(2, 3, 16, 16)] * 4 + [(1, 3, 24, 32)] * 3
    with caplog.at_level(logging.WARNING, logger="segexport.runtime.engine"):
        for seed, shape in enumerate(shapes):
            feeds = frame(shape, seed)
            backend.assert_matches(runner.infer(feeds), model, feeds)
    if backend.capturable(model):
        # one plain run per shape, then a capture whose first replay is that frame
        assert backend.log.count("cudaGraphInstantiate") == 2
        assert backend.log.count("cudaGraphLaunch") == 3 + 2
        assert runner.graph_failures == {}
        assert backend.log.count("cudaGraphExecDestroy") == 1  # the first shape's graph
    else:
        assert backend.log.count("cudaGraphLaunch") == 0
        assert len(runner.graph_failures) == 2
        assert "CUDA graph capture failed" in caplog.text


def test_streaming_with_cuda_graphs(backend: Backend) -> None:
    model = MODELS["identity"]()
    runner = backend.runner(model, cuda_graph=True)
    frames = [frame((1, 3, 16, 16), seed) for seed in range(6)]
    for feeds, outputs in zip(frames, runner.infer_stream(frames), strict=True):
        backend.assert_matches(outputs, model, feeds)
    assert backend.log.count("cudaGraphInstantiate") == 2  # one per slot


def test_mask_output_only_moves_class_ids(backend: Backend) -> None:
    model = MODELS["conv"]()
    runner = backend.runner(model, outputs=["mask"])
    feeds = frame((2, 3, 32, 48), 3)
    before = backend.log.downloaded_bytes()
    outputs = runner.infer(feeds)
    assert list(outputs) == ["mask"] and outputs["mask"].dtype == np.uint8
    assert backend.log.downloaded_bytes() - before == 2 * 32 * 48  # one byte per pixel
    backend.assert_matches(outputs, model, feeds)


def test_raw_frames_upload_a_quarter_of_the_bytes(backend: Backend) -> None:
    """`--input-format uint8-nhwc`: a 1024x2048 frame crosses as 6.3 MB of uint8 pixels where the
    float graph takes 25.2 MB, and the outputs are the float graph's on the normalised frame."""
    size = (1024, 2048)
    framed, plain = MODELS["conv-frames"](*size), MODELS["conv"]()
    plain = EngineModel(
        plain.name,
        plain.onnx,
        plain.outputs,
        {"image": {"min": [1, 3, 8, 8], "opt": [1, 3, *size], "max": [1, 3, *size]}},
    )
    pixels = np.random.default_rng(3).integers(0, 256, size=(1, *size, 3), dtype=np.uint8)
    uploads = {}
    for model, feeds in (
        (framed, {"image": pixels}),
        (plain, {"image": preprocess(pixels, IMAGENET_MEAN, IMAGENET_STD)}),
    ):
        runner = backend.runner(model, outputs=["mask"])
        before = backend.log.uploaded_bytes()
        outputs = runner.infer(feeds)
        uploads[model.name] = backend.log.uploaded_bytes() - before
        backend.assert_matches(outputs, model, feeds)
        if model is framed:
            first = outputs["mask"]
    print(
        f"H2D bytes per {size[0]}x{size[1]} frame: "
        f"raw frames {uploads['conv-frames']:,}, float {uploads['conv']:,}"
    )
    assert uploads == {"conv-frames": size[0] * size[1] * 3, "conv": size[0] * size[1] * 3 * 4}
    np.testing.assert_array_equal(first, outputs["mask"])  # the same ids either way


def test_fp16_outputs_arrive_as_float32(backend: Backend) -> None:
    model = MODELS["conv-fp16"]()
    runner = backend.runner(model)
    feeds = frame((1, 3, 16, 16), 5)
    outputs = runner.infer(feeds)
    assert outputs["logits"].dtype == np.float32
    backend.assert_matches(outputs, model, feeds)


def test_bad_requests_are_refused_with_the_reason(backend: Backend) -> None:
    model = MODELS["conv"]()
    with pytest.raises(SegexportError, match="no output probabilities; it has logits, mask"):
        backend.runner(model, outputs=["probabilities"])
    runner = backend.runner(model)
    with pytest.raises(SegexportError, match="outside the range the engine was built for"):
        runner.infer(frame((5, 3, 16, 16), 0))
    with pytest.raises(SegexportError, match="missing inputs image"):
        runner.infer({})
    frame_1 = runner.submit(frame((1, 3, 16, 16), 0))
    runner.result(frame_1)
    with pytest.raises(SegexportError, match="already collected"):
        runner.result(frame_1)
    runner.close()
    with pytest.raises(SegexportError, match="closed"):
        runner.infer(frame((1, 3, 16, 16), 0))


def test_cuda_errors_name_the_call_and_cuda_error_string(backend: Backend) -> None:
    with pytest.raises(CudaError, match=r"cudaFree failed \(cudaErrorInvalidValue: invalid argument\)"):
        Cuda(backend.log).call("cudaFree", 0x10)


def test_close_releases_everything_exactly_once(backend: Backend) -> None:
    model = MODELS["identity"]()
    with backend.runner(model, cuda_graph=True) as runner:
        list(runner.infer_stream(frame((1, 3, 16, 16), seed) for seed in range(4)))
    log = backend.log
    assert log.count("cudaMalloc") == log.count("cudaFree") > 0
    assert log.count("cudaHostAlloc") == log.count("cudaFreeHost") > 0
    assert log.count("cudaStreamCreateWithFlags") == log.count("cudaStreamDestroy") == 2
    assert log.count("cudaGraphInstantiate") == log.count("cudaGraphExecDestroy")
    released = len(log.calls)
    runner.close()
    assert len(log.calls) == released
    if backend.device is not None:
        device = backend.device
        assert not device.allocations and not device.pinned and not device.streams and not device.execs
