"""`segexport trt` end to end on the emulator: parse, build, check against ONNX Runtime and
PyTorch, write and record the engine, then load it back through the manifest's checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from segexport.build import BuildOptions, BuildRequest, build_artifact
from segexport.errors import SegexportError
from segexport.runtime import OnnxRuntimeRunner
from segexport.runtime.engine import open_engine_runner
from segexport.runtime.files import engine_file_name
from tests.emulator import install


@pytest.fixture
def artifact(small_artifact: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "unet-small"
    shutil.copytree(small_artifact, copy)
    return copy


def test_trt_stage_builds_checks_records_and_reopens_an_engine(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch)
    cache = tmp_path / "timing.cache"
    options = BuildOptions(precision="fp32", max_size=(96, 128), max_batch=2, timing_cache=cache)
    messages: list[str] = []
    manifest = build_artifact(BuildRequest(options, artifacts=artifact, force=True), progress=messages.append)
    name = engine_file_name("fp32")
    record = manifest["engines"][name]
    assert record["tensorrt"] == "10.3.0"
    assert record["gpu"] == {"name": "Emulated GPU", "compute_capability": "8.7"}
    assert record["profile"]["image"]["max"] == [2, 3, 96, 128]
    assert record["verification"]["passed"] is True
    assert name in manifest["files"] and cache.read_bytes()
    assert any("Building engine (emulated)" in m for m in messages)  # the progress monitor was called
    with open_engine_runner(artifact, name, manifest, cuda_graph=True) as runner:
        image = np.random.default_rng(0).normal(size=(2, 3, 64, 96)).astype(np.float32)
        expected = OnnxRuntimeRunner(artifact / "model.onnx").infer({"image": image})["logits"]
        for _ in range(3):
            assert np.array_equal(runner.infer({"image": image})["logits"], expected)
        with pytest.raises(SegexportError, match="outside the range the engine was built for"):
            runner.infer({"image": np.zeros((1, 3, 128, 128), np.float32)})


def test_engine_of_another_tensorrt_release_is_refused(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        install(patch)
        options = BuildOptions(precision="fp32", max_size=(96, 128), max_batch=2)
        manifest = build_artifact(BuildRequest(options, artifacts=artifact, force=True))
    install(monkeypatch, tensorrt_version="10.16.1.11")
    with pytest.raises(SegexportError, match=r"built with TensorRT 10\.3\.0, this machine has 10\.16\.1\.11"):
        open_engine_runner(artifact, engine_file_name("fp32"), manifest)
