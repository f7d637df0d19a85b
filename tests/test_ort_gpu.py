"""ONNX Runtime's GPU providers: options, cache keys, the silent CPU fallback refused; and, with
`-m gpu` and the onnxruntime-gpu wheel, the CUDA provider with IO binding against the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from segexport.errors import UnavailableError
from segexport.runtime import ort_gpu
from tests.emulator.models import MODELS, frame

MANIFEST: dict[str, Any] = {
    "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}],
    "export_shape": "1x512x512",
    "dynamic_axes": {"batch": [1, 8], "height": [256, 1024], "width": [256, 2048]},
    "files": {"model.int8.onnx": {"sha256": "ab" * 32}, "model.fp16.onnx": {"sha256": "cd" * 32}},
}


def test_profile_shapes_come_from_the_verified_ranges() -> None:
    assert ort_gpu.profile_shapes(MANIFEST) == {
        "min": "image:1x3x256x256",
        "opt": "image:1x3x512x512",
        "max": "image:8x3x1024x2048",
    }


def test_engine_cache_key_changes_with_model_versions_and_gpu() -> None:
    base = ("ab" * 32, "1.31.1", "10.9.0", "NVIDIA H100 80GB HBM3")
    key = ort_gpu.engine_cache_key(*base)
    assert key.startswith("abababababababab-ort1.31.1-trt10.9.0-NVIDIA-H100-80GB-HBM3-")
    for index, other in enumerate(("cd" * 32, "1.32.0", "10.10.0", "NVIDIA A100")):
        changed = list(base)
        changed[index] = other
        assert ort_gpu.engine_cache_key(*changed) != key


@pytest.mark.parametrize(
    ("file", "fp16", "int8"), [("model.fp16.onnx", True, False), ("model.int8.onnx", False, True)]
)
def test_tensorrt_options_take_precision_from_the_graph(
    tmp_path: Path, file: str, fp16: bool, int8: bool
) -> None:
    options = ort_gpu.tensorrt_options(MANIFEST, file, tmp_path, "Orin")
    assert options["trt_fp16_enable"] is fp16 and options["trt_int8_enable"] is int8
    assert "trt_int8_calibration_table_name" not in options  # Q/DQ scales live in the graph
    assert options["trt_engine_cache_enable"] is True
    assert Path(options["trt_engine_cache_path"]).parent == tmp_path
    assert options["trt_profile_max_shapes"] == "image:8x3x1024x2048"


def _model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(MODELS["conv"]().onnx)
    return path


def test_a_silent_cpu_fallback_is_refused(tmp_path: Path) -> None:
    if ort_gpu.CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider: the gpu tests cover it")
    with pytest.raises(
        UnavailableError, match="gave the session CPUExecutionProvider instead of CUDAExecution"
    ):
        ort_gpu.OrtCudaRunner(_model_file(tmp_path))


@pytest.fixture
def cuda_provider() -> None:
    if ort_gpu.CUDA not in ort.get_available_providers():
        pytest.skip(
            f"needs onnxruntime-gpu: onnxruntime {ort.__version__} offers {ort.get_available_providers()}"
        )


@pytest.mark.gpu
def test_cuda_provider_with_io_binding_matches_the_cpu(tmp_path: Path, cuda_provider: None) -> None:
    path = _model_file(tmp_path)
    try:
        runner = ort_gpu.OrtCudaRunner(path)
    except UnavailableError as error:
        pytest.skip(str(error))
    assert runner.providers[0] == ort_gpu.CUDA
    cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed, shape in enumerate([(1, 3, 16, 16), (2, 3, 32, 48), (2, 3, 32, 48), (1, 3, 8, 8)]):
        feeds = frame(shape, seed)
        logits, mask = cpu.run(None, feeds)
        outputs = runner.infer(feeds)
        assert np.allclose(outputs["logits"], logits, rtol=1e-4, atol=1e-4)
        assert np.mean(outputs["mask"] == mask) >= 0.999
    on_device = runner.run_on_device(frame((1, 3, 16, 16), 9))
    assert all(value.device_name().lower() == "cuda" for value in on_device.values())
    masks_only = ort_gpu.OrtCudaRunner(path, outputs=["mask"])
    assert list(masks_only.infer(frame((1, 3, 16, 16), 1))) == ["mask"]


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_provider_builds_once_into_its_cache(tmp_path: Path, cuda_provider: None) -> None:
    if ort_gpu.TENSORRT not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no TensorRT provider")
    path = _model_file(tmp_path)
    manifest = {
        **MANIFEST,
        "export_shape": "1x16x16",
        "dynamic_axes": {"batch": [1, 4], "height": [8, 32], "width": [8, 48]},
        "files": {"model.onnx": {"sha256": "ef" * 32}},
    }
    try:
        runner = ort_gpu.OrtTensorRTRunner(path, manifest, cache_root=tmp_path / "cache", gpu="gpu")
    except UnavailableError as error:
        pytest.skip(f"TensorRT provider does not load here: {error}")
    feeds = frame((2, 3, 32, 48), 0)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.allclose(runner.infer(feeds)["logits"], expected, rtol=1e-2, atol=1e-2)
    assert any(Path(runner.options["trt_engine_cache_path"]).iterdir())
