"""The TensorRT stage without TensorRT: options, profiles, engine refusal, `trt` and `doctor`."""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from segexport import doctor
from segexport.build import (
    BuildOptions,
    check_options,
    derive_profile,
    profile_check_shapes,
)
from segexport.errors import SegexportError
from segexport.runtime import engine
from segexport.runtime.engine_records import (
    GpuIdentity,
    compatibility_problem,
    profile_problem,
    read_vouched_engine,
)
from segexport.shapes import InputShape
from tests.clitools import assert_one_line_error, run
from tests.manifests import write_manifest

ORIN = GpuIdentity("Orin", (8, 7))
IMAGE_MANIFEST: dict[str, Any] = {
    "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}],
    "dynamic_axes": {"batch": [1, 16], "height": [64, 1024], "width": [64, 1024]},
    "export_shape": "1x512x512",
    "size_rule": {"divisible_by": 32},
}


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "version", "message"),
    [
        (BuildOptions(opt_level=6), None, "--opt-level must be 0..5"),
        (BuildOptions(workspace_gib=0), None, "--workspace must be > 0"),
        (BuildOptions(gpu_fallback=True), None, "--gpu-fallback only applies with --dla-core"),
        (BuildOptions(dla_core=-1), None, "--dla-core must be >= 0"),
        (BuildOptions(dla_core=0, hardware_compat="ampere+"), None, "DLA engines are tied to their device"),
        (BuildOptions(dla_core=0, version_compatible=True), None, "DLA engines are tied to their device"),
        (BuildOptions(precision="int8", legacy_fp16_flag=True), None, "it needs --precision fp16"),
        (BuildOptions(hardware_compat="turing+"), None, "--hardware-compat must be one of"),
        (BuildOptions(legacy_fp16_flag=True), "11.4.0.106", "removed BuilderFlag.FP16"),
        (BuildOptions(dla_core=0), "11.4.0.106", "--dla-core needs TensorRT 10.x"),
    ],
)
def test_option_validation(options: BuildOptions, version: str | None, message: str) -> None:
    with pytest.raises(SegexportError, match=message.replace("+", r"\+").replace(".", r"\.")):
        check_options(options, version)


@pytest.mark.parametrize("version", ["10.3.0", "10.16.1.11"])
def test_10x_only_options_pass_on_10x(version: str) -> None:
    check_options(BuildOptions(legacy_fp16_flag=True), version)
    check_options(BuildOptions(dla_core=1, gpu_fallback=True, opt_level=5, workspace_gib=2), version)


# --------------------------------------------------------------------------- profiles


def test_profile_defaults_come_from_the_manifest() -> None:
    profile = derive_profile(IMAGE_MANIFEST, BuildOptions())
    assert profile == {
        "image": {"min": [1, 3, 64, 64], "opt": [1, 3, 512, 512], "max": [16, 3, 1024, 1024]},
    }
    assert profile_check_shapes(profile) == [
        InputShape(1, 64, 64),
        InputShape(1, 512, 512),
        InputShape(2, 512, 512),
    ]


def test_profile_overrides_within_the_verified_range() -> None:
    options = BuildOptions(min_size=(256, 320), opt_size=(384, 640), max_size=(512, 1024), max_batch=4)
    profile = derive_profile(IMAGE_MANIFEST, options)
    assert profile["image"] == {"min": [1, 3, 256, 320], "opt": [1, 3, 384, 640], "max": [4, 3, 512, 1024]}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (BuildOptions(max_size=(2048, 2048)), "--max-size: height 2048 is outside the range"),
        (BuildOptions(min_size=(32, 64)), "--min-size: height 32 is outside the range"),
        (BuildOptions(opt_size=(500, 512)), "not a multiple of 32"),
        (BuildOptions(min_size=(512, 512), opt_size=(256, 256)), "need min <= opt <= max"),
        (BuildOptions(max_batch=32), "--max-batch 32 is outside the batch range"),
    ],
)
def test_profile_refuses_shapes_the_onnx_was_not_verified_for(options: BuildOptions, message: str) -> None:
    with pytest.raises(SegexportError, match=message):
        derive_profile(IMAGE_MANIFEST, options)


def test_profile_of_a_batch_only_model_with_two_inputs() -> None:
    manifest = {
        "inputs": [
            {"name": "roi_features", "dtype": "float32", "shape": ["num_rois", 256, 14, 14]},
            {"name": "labels", "dtype": "int64", "shape": ["num_rois"]},
        ],
        "dynamic_axes": {"num_rois": [1, 64]},
        "export_shape": "2",
    }
    profile = derive_profile(manifest, BuildOptions(max_batch=8))
    assert profile["roi_features"] == {
        "min": [1, 256, 14, 14],
        "opt": [2, 256, 14, 14],
        "max": [8, 256, 14, 14],
    }
    assert profile["labels"] == {"min": [1], "opt": [2], "max": [8]}


def test_runtime_refuses_shapes_outside_the_profile() -> None:
    record = {"profile": derive_profile(IMAGE_MANIFEST, BuildOptions(max_size=(512, 512), max_batch=2))}
    assert profile_problem(record, {"image": (2, 3, 512, 256)}) is None
    assert "outside the range the engine was built for" in str(
        profile_problem(record, {"image": (1, 3, 640, 512)})
    )
    assert "outside the range" in str(profile_problem(record, {"image": (4, 3, 64, 64)}))
    assert "has no input 'x'" in str(profile_problem(record, {"x": (1, 3, 64, 64)}))


def test_engine_check_gates_on_onnx_parity_and_the_recorded_reference() -> None:
    from segexport.build import EngineCheck
    from segexport.compare import OutputComparison, Tolerance, VerificationReport
    from segexport.runtime.judge import Judgement

    parity = VerificationReport("onnxruntime", "tensorrt", Tolerance(), [])
    good = OutputComparison("logits", [1], 0.1, 0.01, 1e-3, 0.999, 0, True)
    assert EngineCheck(parity, Judgement("tensorrt", [good])).passed
    assert EngineCheck(parity, None).passed  # random weights: not judged on the recording
    bad = OutputComparison("logits", [1], 0.1, 0.01, 1e-3, 0.95, 0, False, reasons=["argmax agreement 95%"])
    low = EngineCheck(parity, Judgement("tensorrt", [bad]))
    assert not low.passed
    assert low.failures() == ["against recorded PyTorch: output logits: argmax agreement 95%"]
    assert low.to_dict()["vs_pytorch"]["agreement"] == 0.95


# --------------------------------------------------------------------------- engine refusal


def _record(**overrides: Any) -> dict[str, Any]:
    record = {
        "tensorrt": "10.3.0",
        "gpu": ORIN.to_dict(),
        "precision": "int8",
        "version_compatible": False,
        "hardware_compat": "same",
        "profile": derive_profile(IMAGE_MANIFEST, BuildOptions()),
    }
    return {**record, **overrides}


def test_compatibility_rules() -> None:
    assert compatibility_problem(_record(), "10.3.0", ORIN) is None
    assert "built with TensorRT 10.3.0, this machine has 10.16.1.11" in str(
        compatibility_problem(_record(), "10.16.1.11", ORIN)
    )
    assert "built for Orin (sm 8.7), this machine has NVIDIA H100" in str(
        compatibility_problem(_record(), "10.3.0", GpuIdentity("NVIDIA H100", (9, 0)))
    )
    flexible = _record(version_compatible=True, hardware_compat="ampere+")
    assert compatibility_problem(flexible, "10.16.1.11", GpuIdentity("NVIDIA A10", (8, 6))) is None
    assert compatibility_problem(flexible, "11.4.0.106", ORIN) is None  # later majors run them too
    assert "has the older 10.2.0" in str(compatibility_problem(flexible, "10.2.0", ORIN))
    assert "compute capability 7.5" in str(
        compatibility_problem(flexible, "10.3.0", GpuIdentity("T4", (7, 5)))
    )


def _engine_artifact(directory: Path, record: dict[str, Any]) -> Path:
    directory.mkdir()
    (directory / "model.int8.engine").write_bytes(b"not really a plan, never deserialized here")
    write_manifest(directory, engines={"model.int8.engine": record})
    return directory


def _fake_tensorrt(monkeypatch: pytest.MonkeyPatch, version: str) -> list[bytes]:
    """A stand-in `tensorrt` module that records what would have been deserialized."""
    deserialized: list[bytes] = []

    class Runtime:
        def __init__(self, _logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> None:
            deserialized.append(data)

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING = 0, 1, 2

        def __init__(self) -> None:
            pass

    fake = types.ModuleType("tensorrt")
    fake.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    fake.__dict__.update(__version__=version, Runtime=Runtime, ILogger=ILogger)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(engine, "current_gpu", lambda device=0: ORIN)
    monkeypatch.setattr(engine, "import_cudart", lambda: types.SimpleNamespace())
    return deserialized


@pytest.mark.parametrize(
    ("version", "tamper", "message"),
    [
        ("10.16.1.11", False, "built with TensorRT 10.3.0, this machine has 10.16.1.11"),
        ("10.3.0", True, "does not match the manifest"),
    ],
)
def test_engine_is_refused_before_deserializing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, tamper: bool, message: str
) -> None:
    directory = _engine_artifact(tmp_path / "art", _record())
    if tamper:
        with (directory / "model.int8.engine").open("ab") as handle:
            handle.write(b"!")
    deserialized = _fake_tensorrt(monkeypatch, version)
    manifest = json.loads((directory / "manifest.json").read_text())
    with pytest.raises(SegexportError, match=message):
        engine.open_engine_runner(directory, "model.int8.engine", manifest)
    assert deserialized == []


def test_vouched_engine_reaches_the_deserializer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = _engine_artifact(tmp_path / "art", _record())
    deserialized = _fake_tensorrt(monkeypatch, "10.3.0")
    manifest = json.loads((directory / "manifest.json").read_text())
    # The fake runtime returns None, which the runner reports as a failed deserialization.
    with pytest.raises(SegexportError, match="could not deserialize"):
        engine.open_engine_runner(directory, "model.int8.engine", manifest)
    assert deserialized == [(directory / "model.int8.engine").read_bytes()]


def test_engine_without_build_record_is_refused(tmp_path: Path) -> None:
    directory = _engine_artifact(tmp_path / "art", _record())
    manifest = json.loads((directory / "manifest.json").read_text())
    del manifest["engines"]
    with pytest.raises(SegexportError, match="no build record"):
        read_vouched_engine(directory, "model.int8.engine", manifest, "10.3.0", ORIN)


def test_engine_runtime_does_not_import_torch() -> None:
    code = "import sys, segexport.runtime.engine, segexport.runtime; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- commands


def test_trt_without_tensorrt_leaves_the_verified_int8_onnx(tmp_path: Path) -> None:
    out = tmp_path / "unet-small"
    code, _, err = run("trt", "--precision", "int8", "--model", "unet-small", "--artifacts", str(out))
    assert_one_line_error(code, err, "TensorRT is not importable here", exit_code=3, after_progress=True)
    assert f"{out / 'model.int8.onnx'} is ready" in err
    assert err.count("TensorRT readiness of model.int8.onnx") == 1, err  # said once, not per stage
    assert "--precision int8`" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["weights"]["path"].endswith("unet-small/demo.safetensors")
    assert manifest["precisions"]["int8"]["agreement"] >= 0.99
    assert "model.int8.onnx" in manifest["files"]
    assert not list(out.glob("*.engine"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "int8", "--legacy-fp16-flag"], "it needs --precision fp16"),
        (["--gpu-fallback"], "--gpu-fallback only applies with --dla-core"),
    ],
)
def test_trt_option_errors(tmp_path: Path, args: list[str], message: str) -> None:
    code, _, err = run("trt", *args, "--artifacts", str(tmp_path / "none"))
    assert code == 2
    assert_one_line_error(code, err, message)


def test_trt_keeps_an_existing_engine_without_force(tmp_path: Path) -> None:
    directory = _engine_artifact(tmp_path / "art", _record())
    code, _, err = run("trt", "--precision", "int8", "--artifacts", str(directory))
    assert_one_line_error(code, err, "model.int8.engine already exists; pass --force")


def test_doctor_reports_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # whatever is installed: report it missing
    report = doctor.environment_report()
    assert report["tensorrt"]["available"] is False
    assert report["tensorrt"]["reason"]
    assert report["torch"]["version"] == torch.__version__
    assert report["onnxruntime"]["providers"] == onnxruntime.get_available_providers()
    capabilities = {item["task"]: item for item in report["capabilities"]}
    assert capabilities["run ONNX on the CPU"]["ok"] is True
    assert capabilities["build TensorRT engines (segexport trt)"]["ok"] is False
    assert capabilities["build TensorRT engines (segexport trt)"]["reason"] == report["tensorrt"]["reason"]
    text = doctor.format_report(report)
    assert "TensorRT:     no - " in text
    assert "[no ] build TensorRT engines" in text


def test_doctor_names_an_importable_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_tensorrt(monkeypatch, "10.3.0")
    assert doctor.tensorrt_report() == {"available": True, "version": "10.3.0", "reason": None}


def test_doctor_json() -> None:
    code, out, _ = run("doctor", "--json")
    assert code == 0
    report = json.loads(out)
    assert {"tensorrt", "cuda", "onnxruntime", "torch", "capabilities"} <= set(report)
