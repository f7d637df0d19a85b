"""Real TensorRT builds and runs. They need TensorRT, cuda-python and a GPU: skipped elsewhere.

Written to run unchanged on a Jetson or a desktop GPU: `pip install -e '.[dev,trt]'`,
then `pytest -m tensorrt`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segexport.build import ENGINE_TOLERANCE, BuildOptions, BuildRequest, build_artifact
from segexport.compare import DEFAULT_TOLERANCES
from segexport.doctor import cuda_report
from segexport.errors import SegexportError
from segexport.export import ExportRequest, export_onnx
from segexport.runtime import OnnxRuntimeRunner
from segexport.runtime.engine import open_engine_runner
from segexport.runtime.engine_records import tensorrt_unavailable_reason
from segexport.runtime.files import engine_file_name


def _missing() -> str | None:
    reason = tensorrt_unavailable_reason()
    if reason:
        return f"needs TensorRT: {reason}"
    cuda = cuda_report()
    return None if cuda["available"] else f"needs a CUDA GPU: {cuda['reason']}"


MISSING = _missing()
pytestmark = [
    pytest.mark.tensorrt,
    pytest.mark.gpu,
    pytest.mark.skipif(MISSING is not None, reason=str(MISSING)),
]


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """unet-small with its trained demo weights, verified for 1..4 x 64..256 x 64..256."""
    out = tmp_path_factory.mktemp("trt") / "unet-small"
    export_onnx(
        ExportRequest(
            "unet-small",
            weights="demo",
            size=(128, 128),
            min_size=(64, 64),
            max_size=(256, 256),
            max_batch=4,
            out_dir=out,
        )
    )
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_builds_runs_and_matches_onnx_runtime(
    small_demo: Path, precision: str, tmp_path: Path
) -> None:
    cache = tmp_path / "timing.cache"
    options = BuildOptions(precision=precision, max_size=(192, 256), max_batch=2, timing_cache=cache)
    manifest = build_artifact(BuildRequest(options, artifacts=small_demo, force=True))
    name = engine_file_name(precision)
    record = manifest["engines"][name]
    assert record["verification"]["passed"] is True
    vs_pytorch = record["verification"]["vs_pytorch"]  # demo weights, 128x128 data inside the profile
    assert vs_pytorch["agreement"] >= DEFAULT_TOLERANCES[precision].min_agreement
    assert record["profile"]["image"]["max"] == [2, 3, 192, 256]
    assert cache.stat().st_size > 0
    runner = open_engine_runner(small_demo, name, manifest)
    source = OnnxRuntimeRunner(small_demo / record["source_onnx"])
    image = np.random.default_rng(0).normal(size=(2, 3, 96, 160)).astype(np.float32)
    expected = source.infer({"image": image})["logits"]
    actual = runner.infer({"image": image})["logits"]
    rel_l2 = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    assert rel_l2 <= ENGINE_TOLERANCE[precision].max_rel_l2
    with pytest.raises(SegexportError, match="outside the range the engine was built for"):
        runner.infer({"image": np.zeros((1, 3, 256, 256), np.float32)})
    runner.close()


def test_engine_recorded_for_another_gpu_is_refused(small_demo: Path) -> None:
    manifest = build_artifact(BuildRequest(BuildOptions(precision="fp32"), artifacts=small_demo, force=True))
    record = manifest["engines"]["model.fp32.engine"]
    record["gpu"] = {"name": "Some Other GPU", "compute_capability": "7.5"}
    with pytest.raises(SegexportError, match="built for Some Other GPU"):
        open_engine_runner(small_demo, "model.fp32.engine", json.loads(json.dumps(manifest)))
