"""The emulator catches what a real GPU punishes, and it looks like the real bindings.

Each misuse is planted by a scenario and run twice: with the emulator's check on it must be
caught; with that one check off the same scenario must go unnoticed. So every check is
needed by a test that fails without it.
"""

from __future__ import annotations

import ast
import inspect
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segexport.errors import SegexportError
from segexport.runtime.cuda import Cuda, CudaError, DeviceBuffer, PinnedBuffer, Stream
from segexport.runtime.engine import TensorRTRunner
from tests.emulator import CHECKS, Emulator, Misuse, engine_bytes, install
from tests.emulator import device as fake_cuda
from tests.emulator import tensorrt as fake_tensorrt
from tests.emulator.models import MODELS, PROFILE, RECORD, frame

ROOT = Path(__file__).resolve().parents[1]


def _runner(**options: Any) -> TensorRTRunner:
    return TensorRTRunner(engine_bytes(MODELS["conv"]().onnx, PROFILE), RECORD, **options)


def read_before_synchronising(emulator: Emulator) -> None:
    """A runner that copies its outputs out of pinned memory without waiting for the stream."""

    class Hasty(TensorRTRunner):
        def result(self, frame: Any) -> dict[str, np.ndarray]:
            slot = self._slots[frame.slot]
            early = {n: slot.views[n].copy() for n in self._outputs}
            super().result(frame)
            return early

    with Hasty(engine_bytes(MODELS["conv"]().onnx, PROFILE), RECORD) as runner:
        feeds = frame((1, 3, 16, 16), 0)
        early = runner.infer(feeds)
        with _runner() as careful:
            expected = careful.infer(feeds)
    if not np.array_equal(early["logits"], expected["logits"], equal_nan=True):
        raise Misuse("deferred", "outputs read before the stream was synchronised differ")


def copy_larger_than_allocation(emulator: Emulator) -> None:
    cuda = Cuda()
    device, host, stream = DeviceBuffer(cuda, 64), PinnedBuffer(cuda, 128), Stream(cuda)
    stream.copy_to_device(device.pointer, host.pointer, 128)


def tensor_address_never_set(emulator: Emulator) -> None:
    runner = _runner(reserve="grow")
    context = runner._slot(0).context
    context.set_input_shape("image", (1, 3, 16, 16))
    if not context.execute_async_v3(int(runner._slots[0].stream)):
        raise SegexportError("TensorRT execution failed")


def tensor_address_freed(emulator: Emulator) -> None:
    runner = _runner(outputs=["logits"])  # the mask stays on the device, where the engine writes it
    runner.infer(frame((1, 3, 16, 16), 0))
    runner._slots[0].device["mask"].free()  # the context still points at it
    runner.infer(frame((1, 3, 16, 16), 1))


def input_shape_not_set(emulator: Emulator) -> None:
    runner = _runner()  # reserve="max" gave the context every address
    context = runner._engine.create_execution_context()
    for name, buffer in runner._slot(0).device.items():
        context.set_tensor_address(name, buffer.pointer)
    if not context.execute_async_v3(int(runner._slots[0].stream)):
        raise SegexportError("TensorRT execution failed")


def buffer_released_twice(emulator: Emulator) -> None:
    cuda = Cuda()
    buffer = DeviceBuffer(cuda, 64)
    pointer = buffer.pointer
    buffer.free()
    buffer.free()  # the helper releases once ...
    cuda.call("cudaFree", pointer)  # ... a raw second release is what CUDA refuses


def pageable_host_memory(emulator: Emulator) -> None:
    cuda = Cuda()
    device, stream = DeviceBuffer(cuda, 64), Stream(cuda)
    pageable = np.zeros(64, np.uint8)
    stream.copy_to_device(device.pointer, pageable.ctypes.data, 64)


def context_used_from_two_threads(emulator: Emulator) -> None:
    runner = _runner()
    runner.submit(frame((1, 3, 16, 16), 0), slot_index=0)  # in flight on this thread
    problems: list[BaseException] = []

    def other_thread() -> None:
        try:
            runner._slots[0].context.set_input_shape("image", (2, 3, 16, 16))
        except BaseException as error:
            problems.append(error)

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    if problems:
        raise problems[0]


def capture_without_warm_up(emulator: Emulator) -> None:
    runner = _runner(cuda_graph=True)
    slot = runner._slot(0)
    runner._configure(slot, {"image": (1, 3, 16, 16)})
    slot.warm = True  # skip the plain run that TensorRT asks for before a capture
    runner.infer(frame((1, 3, 16, 16), 0))
    if runner.graph_failures:
        raise SegexportError(next(iter(runner.graph_failures.values())))


SCENARIOS: dict[str, tuple[Callable[[Emulator], None], type[BaseException], str]] = {
    "deferred": (read_before_synchronising, Misuse, "before the stream was synchronised"),
    "bounds": (copy_larger_than_allocation, CudaError, r"cudaMemcpyAsync failed \(cudaErrorInvalidValue"),
    "address": (tensor_address_never_set, SegexportError, "TensorRT execution failed"),
    "shapes": (input_shape_not_set, SegexportError, "TensorRT execution failed"),
    "double-free": (buffer_released_twice, CudaError, r"cudaFree failed \(cudaErrorInvalidValue: invalid"),
    "pinned": (pageable_host_memory, Misuse, "not page-locked"),
    "threads": (context_used_from_two_threads, Misuse, "second thread"),
    "warmup": (capture_without_warm_up, SegexportError, "call enqueueV3 once before capturing"),
}
FREED = (tensor_address_freed, CudaError, r"cudaStreamSynchronize failed \(cudaErrorIllegalAddress")


def test_every_check_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(CHECKS)


@pytest.mark.parametrize("check", CHECKS)
def test_misuse_is_caught_and_goes_unnoticed_without_its_check(
    monkeypatch: pytest.MonkeyPatch, check: str
) -> None:
    scenario, error, message = SCENARIOS[check]
    with monkeypatch.context() as patch, pytest.raises(error, match=message):
        scenario(install(patch))
    with monkeypatch.context() as patch:
        scenario(install(patch, disabled=[check]))


def test_freed_tensor_address_faults_at_synchronisation(monkeypatch: pytest.MonkeyPatch) -> None:
    scenario, error, message = FREED
    with monkeypatch.context() as patch, pytest.raises(error, match=message):
        scenario(install(patch))
    with monkeypatch.context() as patch:
        scenario(install(patch, disabled=["address"]))


def test_capture_failure_falls_back_with_the_reason_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    install(monkeypatch)
    with (
        caplog.at_level(logging.WARNING, logger="segexport.runtime.engine"),
        pytest.raises(SegexportError, match="call enqueueV3 once"),
    ):
        capture_without_warm_up(Emulator(None, None, None))  # type: ignore[arg-type]
    assert "CUDA graph capture failed at image 1x3x16x16" in caplog.text


def test_out_of_memory_names_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, memory=1024)
    with pytest.raises(CudaError, match=r"cudaMalloc failed \(cudaErrorMemoryAllocation: out of memory\)"):
        _runner().infer(frame((1, 3, 16, 16), 0))


@pytest.mark.parametrize(
    ("driver", "bindings", "problem"),
    [
        (13000, 13000, None),
        (13000, 12090, None),
        (12060, 13050, "built for CUDA 13.5, but the driver supports CUDA 12.6.*segexport\\[cuda12\\]"),
        (0, 13000, "no NVIDIA driver"),
    ],
)
def test_driver_and_bindings_versions(
    monkeypatch: pytest.MonkeyPatch, driver: int, bindings: int, problem: str | None
) -> None:
    install(monkeypatch, driver=driver, runtime=bindings)
    report = Cuda().versions()
    assert report["bindings"] == f"{bindings // 1000}.{bindings % 1000 // 10}"
    if problem is None:
        assert report["problem"] is None
    else:
        assert re.search(problem, report["problem"])


# -- the emulator's surface against the real bindings ------------------------------------------


def test_cuda_surface_matches_the_installed_cuda_bindings() -> None:
    real = pytest.importorskip("cuda.bindings.runtime", reason="cuda-bindings is not installed")
    emulated = fake_cuda.functions(fake_cuda.Runtime(fake_cuda.Device()))
    for name, function in emulated.items():
        assert hasattr(real, name), f"{name} is not in cuda.bindings.runtime"
        real_parameters = list(inspect.signature(getattr(real, name)).parameters)
        assert list(inspect.signature(function).parameters) == real_parameters, name
    for name, value in fake_cuda.CONSTANTS.items():
        assert hasattr(real, name), name
        if isinstance(value, type) and issubclass(value, int):
            for member in value.__members__:  # type: ignore[attr-defined]
                assert int(getattr(getattr(real, name), member)) == int(getattr(value, member)), member
        elif isinstance(value, int):
            assert int(getattr(real, name)) == value, name
    # what the runtime calls returns an `(error, value...)` tuple in both
    assert real.cudaGetErrorString(real.cudaError_t.cudaErrorInvalidValue)[1] == b"invalid argument"


def test_the_emulator_covers_every_cuda_call_of_the_runtime() -> None:
    called: set[str] = set()
    for path in (ROOT / "segexport" / "runtime").glob("*.py"):
        called |= set(re.findall(r"\"(cuda[A-Z]\w+)\"", path.read_text()))
        called |= set(re.findall(r"\.rt\.(cuda[A-Z]\w+)", path.read_text()))
    emulated = set(fake_cuda.functions(fake_cuda.Runtime(fake_cuda.Device()))) | set(fake_cuda.CONSTANTS)
    assert called and called <= emulated, called - emulated


def _stub_classes(path: Path) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in ast.parse(path.read_text()).body if isinstance(node, ast.ClassDef)}


def _members(classes: dict[str, ast.ClassDef], name: str) -> dict[str, list[list[str]]]:
    """Methods (with each overload's parameter names), properties and attributes of a stub class
    and its bases in the stub."""
    found: dict[str, list[list[str]]] = {}
    node = classes[name]
    for item in node.body:
        if isinstance(item, ast.ClassDef):
            found.setdefault(item.name, [])
        elif isinstance(item, ast.FunctionDef):
            found.setdefault(item.name, []).append([a.arg for a in item.args.args[1:]])
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            found.setdefault(item.target.id, [])
        elif isinstance(item, ast.Assign):
            for target in item.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, [])
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            for key, value in _members(classes, base.id).items():
                found.setdefault(key, value)
    return found


def _stub_files() -> list[Path]:
    cache = Path(os.environ.get("SEGEXPORT_TRT_CACHE", ROOT / ".cache" / "trt-stubs"))
    files = sorted(cache.glob("*/stubs/tensorrt/__init__.pyi"))
    if not files:
        pytest.skip(f"no TensorRT stubs in {cache}: run `make typecheck-trt` first (it generates them)")
    return files


def test_tensorrt_surface_matches_the_generated_stubs() -> None:
    emulated = fake_tensorrt.module_attributes("0", executor=None)
    for stub in _stub_files():
        classes = _stub_classes(stub)
        for name, cls in emulated.items():
            if not isinstance(cls, type):
                continue
            assert name in classes, f"{stub}: no class {name}"
            members = _members(classes, name)
            for attribute, value in vars(cls).items():
                if attribute.startswith("_"):
                    continue
                assert attribute in members, f"{stub}: {name}.{attribute} is not in the bindings"
                if callable(value) and members[attribute]:
                    ours = list(inspect.signature(value).parameters)[1:]
                    assert any(ours == overload[: len(ours)] for overload in members[attribute]), (
                        f"{stub}: {name}.{attribute}{tuple(ours)} vs {members[attribute]}"
                    )


def test_doctor_refuses_bindings_newer_than_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    from segexport import doctor

    install(monkeypatch, driver=12060, runtime=13000)
    report = doctor.cuda_report()
    assert report["available"] is False
    assert report["versions"]["driver"] == "12.6" and report["versions"]["bindings"] == "13.0"
    assert "driver supports CUDA 12.6" in report["reason"]
    text = doctor.format_report(doctor.environment_report())
    assert "driver CUDA 12.6, bindings built for CUDA 13.0" in text
    assert "[no ] run TensorRT engines" in text


def test_doctor_lists_the_emulated_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from segexport import doctor

    install(monkeypatch)
    report = doctor.cuda_report()
    assert report["available"] is True
    assert report["devices"] == [{"name": "Emulated GPU", "compute_capability": "8.7"}]
