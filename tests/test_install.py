"""The base install is the runtime: a wheel installed without torch runs an artifact.

This is what a Jetson or a robot image gets from `pip install segexport`. The test builds
the wheel, installs it into a fresh virtual environment (no torch, no onnx), and runs the
runtime API and `segexport doctor` there on an artifact the full install made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from segexport.runtime import open_artifact, preprocess

REPO = Path(__file__).resolve().parents[1]

RUN_ARTIFACT = """
import json, sys
import numpy as np
from segexport.runtime import open_artifact, preprocess
runner, manifest = open_artifact(sys.argv[1])
image = np.load(sys.argv[2])
feeds = {"image": preprocess(image, manifest["preprocessing"]["mean"], manifest["preprocessing"]["std"])}
np.save(sys.argv[3], runner.infer(feeds)["logits"])
print(json.dumps({"torch": "torch" in sys.modules, "onnx": "onnx" in sys.modules}))
"""


def _run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run outside the checkout with no PYTHONPATH, so the installed wheel is what runs."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the python of a fresh venv where only the wheel and its base requirements are)."""
    root = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(root), str(REPO)])
    assert built.returncode == 0, built.stderr
    (wheel,) = root.glob("segexport-*.whl")
    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = _run([str(python), "-m", "pip", "install", "--quiet", str(wheel)])
    assert installed.returncode == 0, installed.stderr
    return wheel, python


@pytest.mark.slow
def test_wheel_carries_the_package_only(runtime_venv: tuple[Path, Path]) -> None:
    wheel, _ = runtime_venv
    names = zipfile.ZipFile(wheel).namelist()
    assert "segexport/runtime/runners.py" in names
    assert "segexport/serving/triton_models/preprocess.py" in names  # copied into Triton repositories
    assert {"segexport/trt_rules/targets.json", "segexport/trt_rules/10.3.json"} <= set(names)  # package data
    assert not [n for n in names if n.startswith(("models/", "tests/", "calibration/"))]
    assert not [n for n in names if n.endswith((".safetensors", ".pt", ".pth", ".onnx"))]
    print(f"{wheel.name}: {wheel.stat().st_size / 1024:.0f} KiB")


@pytest.mark.slow
def test_runtime_runs_an_artifact_without_torch(
    runtime_venv: tuple[Path, Path], small_artifact: Path, tmp_path: Path
) -> None:
    _, python = runtime_venv
    where = _run([str(python), "-c", "import segexport; print(segexport.__file__)"], cwd=tmp_path)
    assert str(REPO) not in where.stdout, where.stdout
    assert _run([str(python), "-c", "import torch"]).returncode != 0, "torch must not be installed"
    assert _run([str(python), "-c", "import onnx"]).returncode != 0, "onnx must not be installed"

    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image_file, out_file = tmp_path / "image.npy", tmp_path / "out.npy"
    np.save(image_file, image)
    command = [str(python), "-c", RUN_ARTIFACT, str(small_artifact), str(image_file), str(out_file)]
    ran = _run(command, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {"torch": False, "onnx": False}

    runner, manifest = open_artifact(small_artifact)
    mean, std = manifest["preprocessing"]["mean"], manifest["preprocessing"]["std"]
    expected = runner.infer({"image": preprocess(image, mean, std)})["logits"]
    np.testing.assert_allclose(np.load(out_file), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_doctor_and_missing_extras_without_torch(runtime_venv: tuple[Path, Path], tmp_path: Path) -> None:
    _, python = runtime_venv
    segexport = [str(python), "-m", "segexport"]
    doctor = _run([*segexport, "doctor", "--json"], cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stderr
    report = json.loads(doctor.stdout)
    assert report["torch"]["version"] is None
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]

    export = _run([*segexport, "onnx", "--model", "unet-small", "--size", "64x64"], cwd=tmp_path)
    assert export.returncode == 3  # every missing extra: exit 3
    assert "Traceback" not in export.stderr
    message = export.stderr.strip()
    assert message.startswith("segexport: error: this command needs the 'export' extra ("), message
    assert message.endswith("is not installed): pip install 'segexport[export]'"), message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "artifacts").exists()
    bench = _run([*segexport, "bench", "--model", "unet-small", "--runs", "1"], cwd=tmp_path)
    assert bench.returncode == 3 and "Traceback" not in bench.stderr
    assert bench.stderr.strip().endswith("pip install 'segexport[export]'"), bench.stderr


@pytest.mark.slow
def test_triton_without_its_extra_says_which(
    runtime_venv: tuple[Path, Path], small_artifact: Path, tmp_path: Path
) -> None:
    _, python = runtime_venv
    command = [str(python), "-m", "segexport", "triton", "--artifacts", str(small_artifact), "--repo", "repo"]
    ran = _run(command, cwd=tmp_path)
    assert ran.returncode == 3
    assert ran.stderr.strip() == (
        "segexport: error: this command needs the 'triton' extra (tritonclient is not installed): "
        "pip install 'segexport[triton]'"
    )
    assert not (tmp_path / "repo").exists()


@pytest.mark.slow
def test_segexport_run_masks_images_without_torch(
    runtime_venv: tuple[Path, Path], small_artifact: Path, tmp_path: Path
) -> None:
    """The command users run on a device, from the base install alone."""
    from PIL import Image

    from segexport.runtime import Segmenter

    _, python = runtime_venv
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for name, size in (("a.png", (37, 53)), ("b.png", (64, 80))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images / name)
    command = [str(python), "-m", "segexport", "run", "--artifacts", str(small_artifact)]
    ran = _run([*command, "--input", str(images), "--output", str(tmp_path / "out"), "--json"], cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    seg = Segmenter.load(small_artifact)
    for name, size in (("a", (37, 53)), ("b", (64, 80))):
        mask = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{name}.png"))
        assert mask.shape == size
        np.testing.assert_array_equal(mask, seg(next(images.glob(f"{name}.*"))))


@pytest.fixture(scope="module")
def demo_unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unet-small demo artifact (FP32, FP16, CPU INT8) with its recorded reference."""
    from segexport.export import ExportRequest, export_onnx
    from segexport.quantize import QuantizeRequest, quantize_artifact

    out = tmp_path_factory.mktemp("demo") / "unet-small"
    export_onnx(ExportRequest("unet-small", weights="demo", size=(128, 128), out_dir=out))
    quantize_artifact(QuantizeRequest(artifacts=out, fp16=True, int8=False, int8_cpu=True, calib_size=32))
    return out


@pytest.mark.slow
def test_verify_and_trt_on_the_device_without_torch(
    runtime_venv: tuple[Path, Path], demo_unet: Path, tmp_path: Path
) -> None:
    """Issue 25's 'done when': the recorded reference judges every file where PyTorch is not."""
    import shutil

    import onnx
    from onnx import numpy_helper

    from segexport.runtime.artifacts import read_manifest, record_files

    _, python = runtime_venv
    segexport = [str(python), "-m", "segexport"]
    verified = _run([*segexport, "verify", "--artifacts", str(demo_unet)], cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert "PyTorch was not rerun" in verified.stderr
    judged = {line.split()[0]: line.split()[-1] for line in verified.stdout.splitlines()[:-1]}
    assert judged == {"model.onnx": "passed", "model.fp16.onnx": "passed", "model.int8-cpu.onnx": "passed"}

    faulty = tmp_path / "faulty"
    shutil.copytree(demo_unet, faulty)
    model = onnx.load(str(faulty / "model.fp16.onnx"))
    weight = next(t for t in model.graph.initializer if numpy_helper.to_array(t).ndim == 4)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 4, weight.name))
    onnx.save(model, str(faulty / "model.fp16.onnx"))
    record_files(faulty, read_manifest(faulty), ["model.fp16.onnx"])
    failed = _run([*segexport, "verify", "--artifacts", str(faulty)], cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith("segexport: error: 1 artifact(s) differ") and "model.fp16.onnx" in error, error

    built = _run([*segexport, "trt", "--artifacts", str(demo_unet)], cwd=tmp_path)
    assert built.returncode == 3, built.stderr
    assert "Traceback" not in built.stderr and "extra" not in built.stderr
    assert "TensorRT is not importable here (the tensorrt package is not installed)" in built.stderr
