"""Triton repositories, checked offline: configs parse with Triton's own `ModelConfig`, agree
with the ONNX/engine they serve, refuse what Triton would reject, and the ensemble's Python
steps (run here with a stand-in for the backend's utilities) give the runtime's masks."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from segexport.cli import main
from segexport.data import render_scene
from segexport.errors import SegexportError
from segexport.export import ExportRequest, export_onnx
from segexport.quantize import QuantizeRequest, quantize_artifact
from segexport.runtime import open_artifact, preprocess, resize
from segexport.runtime.artifacts import describe_files, read_manifest, sha256_file, write_json_atomic
from segexport.runtime.geometry import logits_to_mask
from segexport.serving.triton import (
    ORT_TENSORRT_KEYS,
    TritonRequest,
    check_repository,
    model_config_module,
    parse_config,
    render_config,
    write_repository,
)
from segexport.serving.triton import repository as triton_repository
from tests.triton import fake_pb_utils
from tests.triton.fake_pb_utils import InferenceRequest, Tensor

try:
    model_config_module()
    MISSING = None
except SegexportError as error:
    MISSING = str(error)

pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"{MISSING} (the dev extra includes it)")

SERVED = (64, 64)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """unet-small's demo checkpoint at 64x64 as FP32, FP16 and Q/DQ INT8 ONNX."""
    out = tmp_path_factory.mktemp("triton") / "unet-small"
    export_onnx(ExportRequest("unet-small", weights="demo", size=SERVED, out_dir=out))
    with pytest.warns(UserWarning, match="calibration images"):
        quantize_artifact(QuantizeRequest(artifacts=out, calib_size=16, eval_images=4))
    return out


@pytest.fixture(scope="module")
def engine_artifact(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The artifact plus an engine record and placeholder engine bytes (TensorRT can't run here:
    the repository copies a plan without parsing it, so its bytes don't matter to these tests)."""
    out = tmp_path_factory.mktemp("triton-engine") / "unet-small"
    shutil.copytree(artifact, out)
    (out / "model.fp16.engine").write_bytes(b"placeholder plan bytes " * 64)
    manifest = read_manifest(out)
    manifest["engines"] = {
        "model.fp16.engine": {
            "tensorrt": "10.3.0",
            "gpu": {"name": "Orin", "compute_capability": "8.7"},
            "precision": "fp16",
            "source_onnx": "model.fp16.onnx",
            "profile": {"image": {"min": [1, 3, 32, 32], "opt": [2, 3, 64, 64], "max": [4, 3, 128, 128]}},
            "version_compatible": False,
            "hardware_compat": None,
        }
    }
    manifest["files"] = describe_files(out)
    write_json_atomic(out / "manifest.json", manifest)
    return out


def write(artifact: Path, repo: Path, **options: Any) -> dict[str, Any]:
    return write_repository(TritonRequest(artifacts=artifact, repo=repo, **options))


def config_of(repo: Path, name: str) -> dict[str, Any]:
    return parse_config((repo / name / "config.pbtxt").read_text())


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["triton", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def cli_error(*args: str) -> str:
    """The one `segexport: error:` line of a refused `segexport triton` (exit 2, no traceback)."""
    code, _, stderr = run_cli(*args)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("segexport: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# --- configs ----------------------------------------------------------------------------------


def test_onnx_fp16_with_the_tensorrt_accelerator(artifact: Path, tmp_path: Path) -> None:
    summary = write(
        artifact, tmp_path, format="onnx-fp16", ort_trt="fp16", preferred_batch=(4, 8), max_queue_delay_us=200
    )
    name = "unet-small-onnx-fp16"
    config = config_of(tmp_path, name)
    assert config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == read_manifest(artifact)["dynamic_axes"]["batch"][1] == 16
    assert config["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": ["3", "-1", "-1"]}]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": ["7", "-1", "-1"]}]
    assert config["dynamic_batching"] == {
        "preferred_batch_size": [4, 8],
        "max_queue_delay_microseconds": "200",
    }
    assert config["instance_group"] == [{"kind": "KIND_GPU", "count": 1}]
    (accelerator,) = config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
    assert accelerator["name"] == "tensorrt"
    parameters = accelerator["parameters"]
    assert set(parameters) <= ORT_TENSORRT_KEYS
    assert parameters["precision_mode"] == "FP16"
    assert parameters["trt_profile_min_shapes"] == "image:1x3x32x32"
    assert parameters["trt_profile_opt_shapes"] == "image:8x3x64x64"
    assert parameters["trt_profile_max_shapes"] == "image:16x3x1024x1024"
    copied = tmp_path / name / "1" / "model.onnx"
    assert sha256_file(copied) == read_manifest(artifact)["files"]["model.fp16.onnx"]["sha256"]
    assert [m["name"] for m in summary["models"]] == [name]
    assert "/tmp/triton-ort-trt-cache/unet-small-onnx-fp16" in summary["notes"][0]
    assert check_repository(tmp_path) == []


def test_a_qdq_graph_gets_the_int8_switch_and_no_calibration_table(artifact: Path, tmp_path: Path) -> None:
    write(artifact, tmp_path, format="onnx-int8", ort_trt="int8", max_batch=4, kind="gpu", instances=2)
    config = config_of(tmp_path, "unet-small-onnx-int8")
    (accelerator,) = config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
    assert accelerator["parameters"]["precision_mode"] == "INT8"
    assert not any("calibration" in key for key in accelerator["parameters"])
    assert config["max_batch_size"] == 4
    assert config["instance_group"] == [{"kind": "KIND_GPU", "count": 2}]
    assert check_repository(tmp_path) == []


def test_cpu_instances_without_accelerators(artifact: Path, tmp_path: Path) -> None:
    write(artifact, tmp_path, name="seg", kind="cpu", instances=3, dynamic_batching=True)
    config = config_of(tmp_path, "seg")
    assert config["instance_group"] == [{"kind": "KIND_CPU", "count": 3}]
    assert "optimization" not in config
    assert config["dynamic_batching"] == {}
    assert check_repository(tmp_path) == []


def test_an_engine_becomes_a_tensorrt_plan(engine_artifact: Path, tmp_path: Path) -> None:
    summary = write(engine_artifact, tmp_path, format="engine", cuda_graphs=True, preferred_batch=(2,))
    name = "unet-small-plan-fp16"
    config = config_of(tmp_path, name)
    assert config["platform"] == "tensorrt_plan"
    assert config["default_model_filename"] == "model.plan"
    assert config["max_batch_size"] == 4  # the profile's max batch
    assert (tmp_path / name / "1" / "model.plan").read_bytes() == (
        engine_artifact / "model.fp16.engine"
    ).read_bytes()
    cuda = config["optimization"]["cuda"]
    assert cuda["graphs"] is True
    assert [spec["batch_size"] for spec in cuda["graph_spec"]] == [1, 2, 4]
    assert cuda["graph_spec"][0]["input"] == {"image": {"dim": ["3", "64", "64"]}}
    assert "exactly 10.3.0" in summary["notes"][0]
    assert check_repository(tmp_path) == []


def test_cuda_graphs_without_batching_use_batch_size_zero(engine_artifact: Path, tmp_path: Path) -> None:
    write(engine_artifact, tmp_path, format="engine", cuda_graphs=True, max_batch=0)
    (spec,) = config_of(tmp_path, "unet-small-plan-fp16")["optimization"]["cuda"]["graph_spec"]
    assert spec == {"input": {"image": {"dim": ["1", "3", "64", "64"]}}}  # batch_size 0 is the default
    assert check_repository(tmp_path) == []


def test_a_version_compatible_engine_says_which_server_option_it_needs(
    engine_artifact: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(engine_artifact, copy)
    manifest = read_manifest(copy)
    manifest["engines"]["model.fp16.engine"]["version_compatible"] = True
    write_json_atomic(copy / "manifest.json", manifest)
    summary = write(copy, tmp_path / "repo", format="engine")
    assert "--backend-config=tensorrt,version-compatible=true" in summary["notes"][0]


def test_the_ensemble_is_wired_once_and_completely(artifact: Path, tmp_path: Path) -> None:
    summary = write(artifact, tmp_path, name="seg", ensemble=True, dynamic_batching=True)
    assert [m["name"] for m in summary["models"]] == [
        "seg",
        "seg_preprocess",
        "seg_postprocess",
        "seg_ensemble",
    ]
    ensemble = config_of(tmp_path, "seg_ensemble")
    assert ensemble["platform"] == "ensemble"
    assert (tmp_path / "seg_ensemble" / "1").is_dir()
    pre = config_of(tmp_path, "seg_preprocess")
    assert pre["backend"] == "python"
    assert pre["output"][0]["dims"] == ["1", "3", "64", "64"]
    assert json.loads(pre["parameters"]["mean"]["string_value"]) == [0.485, 0.456, 0.406]
    assert check_repository(tmp_path) == []


# --- the check can fail -----------------------------------------------------------------------


def edit_config(repo: Path, name: str, change: Any) -> None:
    config = config_of(repo, name)
    change(config)
    (repo / name / "config.pbtxt").write_text(render_config(config))


def test_the_check_finds_configs_that_disagree_with_the_model(artifact: Path, tmp_path: Path) -> None:
    write(artifact, tmp_path, name="seg", format="onnx-int8", ort_trt="int8")

    def break_it(config: dict[str, Any]) -> None:
        config["input"][0]["dims"] = [4, -1, -1]
        config["output"][0]["data_type"] = "TYPE_FP16"
        config["max_batch_size"] = 32
        parameters = config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"][0][
            "parameters"
        ]
        parameters["trt_fp16_enable"] = "1"  # an ORT option name, not a key the backend accepts
        parameters["precision_mode"] = "FP16"
        parameters["int8_calibration_table_name"] = "calib.flatbuffers"

    edit_config(tmp_path, "seg", break_it)
    problems = " | ".join(check_repository(tmp_path))
    assert "image: dims [-1, 4, -1, -1]" in problems
    assert "logits: data_type TYPE_FP16 but model.onnx has TYPE_FP32" in problems
    assert "max_batch_size 32 does not fit the artifact's range (batch 1..16)" in problems
    assert "rejects TensorRT accelerator keys ['trt_fp16_enable']" in problems
    assert "needs precision_mode INT8" in problems
    assert "must not get a calibration table" in problems


def test_the_check_finds_a_miswired_ensemble(artifact: Path, tmp_path: Path) -> None:
    write(artifact, tmp_path, name="seg", ensemble=True)

    def miswire(config: dict[str, Any]) -> None:
        steps = config["ensemble_scheduling"]["step"]
        steps[1]["input_map"] = {"image": "network_inputs"}  # a typo: consumed, never produced
        steps[2]["output_map"] = {"MASK": "original_size"}  # produced twice, MASK never

    edit_config(tmp_path, "seg_ensemble", miswire)
    problems = " | ".join(check_repository(tmp_path))
    assert "'network_inputs' is consumed by seg but never produced" in problems
    assert "'network_input' is produced but never consumed" in problems
    assert "'original_size' is produced 2 times" in problems
    assert "'MASK' is consumed by ensemble output but never produced" in problems


def test_a_config_triton_cannot_parse_is_reported(artifact: Path, tmp_path: Path) -> None:
    write(artifact, tmp_path, name="seg")
    path = tmp_path / "seg" / "config.pbtxt"
    path.write_text(path.read_text().replace("TYPE_FP32", "FP32", 1))
    (problem,) = check_repository(tmp_path)
    assert 'no value named "FP32"' in problem or "FP32" in problem


# --- refusals, one line each, nothing written --------------------------------------------------


def test_refuses_a_max_batch_beyond_the_artifacts_range(artifact: Path, tmp_path: Path) -> None:
    line = cli_error("--artifacts", str(artifact), "--repo", str(tmp_path), "--max-batch", "17")
    assert "--max-batch 17 is beyond the artifact's range (batch 1..16)" in line
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_max_batch_beyond_the_engines_profile(engine_artifact: Path, tmp_path: Path) -> None:
    args = [
        "--artifacts",
        str(engine_artifact),
        "--repo",
        str(tmp_path),
        "--format",
        "engine",
        "--max-batch",
        "8",
    ]
    line = cli_error(*args)
    assert "--max-batch 8 is beyond the engine's profile (batch 1..4)" in line
    assert list(tmp_path.iterdir()) == []


def test_refuses_the_engine_format_without_an_engine(artifact: Path, tmp_path: Path) -> None:
    line = cli_error("--artifacts", str(artifact), "--repo", str(tmp_path), "--format", "engine")
    assert "needs a TensorRT engine and the artifact has none" in line


def test_refuses_to_replace_a_model_version_without_force(artifact: Path, tmp_path: Path) -> None:
    args = ["--artifacts", str(artifact), "--repo", str(tmp_path), "--name", "seg", "--ensemble"]
    assert run_cli(*args)[0] == 0
    before = (tmp_path / "seg" / "config.pbtxt").read_text()
    line = cli_error(*args, "--max-batch", "2")
    assert "seg already exists; pass --force to replace it" in line
    assert (tmp_path / "seg" / "config.pbtxt").read_text() == before
    code, _, _ = run_cli(*args, "--max-batch", "2", "--force")
    assert code == 0
    assert config_of(tmp_path, "seg")["max_batch_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "seg",
        "seg_ensemble",
        "seg_postprocess",
        "seg_preprocess",
    ]


def test_a_failure_while_writing_leaves_the_repository_as_it_was(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(artifact, tmp_path, name="seg")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def fail(_version: Path, _source: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(triton_repository, "_python_model", fail)
    with pytest.raises(OSError, match="disk full"):
        write(artifact, tmp_path, name="seg", ensemble=True, max_batch=2, force=True)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg"]  # no staging directories left


@pytest.mark.parametrize("name", ["../escape", "my model", ".hidden", "a/b", ""])
def test_refuses_a_name_triton_would_reject(artifact: Path, tmp_path: Path, name: str) -> None:
    line = cli_error("--artifacts", str(artifact), "--repo", str(tmp_path), "--name", name)
    assert "would not work as a Triton model" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "onnx-int8", "--ort-trt", "fp16"], "only with the INT8 switch"),
        (["--ort-trt", "int8"], "calibration table segexport does not make"),
        (["--ort-trt", "fp16", "--kind", "cpu"], "needs --kind gpu"),
        (["--cuda-graphs"], "needs --format engine"),
        (["--max-batch", "0", "--dynamic-batching"], "dynamic batching needs --max-batch of 1 or more"),
        (["--preferred-batch", "4,32"], "--preferred-batch 32: must be between 1 and --max-batch 16"),
        (["--ensemble", "--size", "60x60"], "divisible by 16"),
    ],
)
def test_refuses_option_combinations(artifact: Path, tmp_path: Path, args: list[str], message: str) -> None:
    line = cli_error("--artifacts", str(artifact), "--repo", str(tmp_path), *args)
    assert message in line
    assert list(tmp_path.iterdir()) == []


def test_cli_json_summary(artifact: Path, tmp_path: Path) -> None:
    code, out, _ = run_cli(
        "--artifacts", str(artifact), "--repo", str(tmp_path), "--format", "onnx-fp16", "--json"
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["ok"] is True
    assert summary["max_batch_size"] == 16
    assert summary["models"][0]["config"].startswith('name: "unet-small-onnx-fp16"')


# --- the Python steps, in process --------------------------------------------------------------


def load_step(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The step's TritonPythonModel, initialised as the stub would, with the fake utilities."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils)
    monkeypatch.setattr(sys, "path", list(sys.path))  # model.py prepends its directory
    spec = importlib.util.spec_from_file_location(
        f"triton_step_{model_dir.name}", model_dir / "1" / "model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    if hasattr(model, "initialize"):
        config = config_of(model_dir.parent, model_dir.name)
        model.initialize({"model_config": json.dumps(config)})
    return model


def test_the_python_steps_give_the_runtimes_masks(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(artifact, tmp_path, name="seg", format="onnx-fp16", ensemble=True)
    pre = load_step(tmp_path / "seg_preprocess", monkeypatch)
    post = load_step(tmp_path / "seg_postprocess", monkeypatch)
    session = ort.InferenceSession(
        str(tmp_path / "seg" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    runner, manifest = open_artifact(artifact, "model.fp16.onnx")
    processing = manifest["preprocessing"]
    rng = np.random.default_rng(7)
    classes: set[int] = set()
    for height, width in [(64, 64), (120, 160), (37, 91), (300, 200)]:
        image, _ = render_scene(rng, height, width)
        (pre_out,) = pre.execute([InferenceRequest([Tensor("IMAGE", image)])])
        (logits,) = session.run(None, {"image": pre_out.output("NETWORK_INPUT")})
        feeds = [Tensor("NETWORK_OUTPUT", logits), Tensor("ORIGINAL_SIZE", pre_out.output("ORIGINAL_SIZE"))]
        (post_out,) = post.execute([InferenceRequest(feeds)])
        served = post_out.output("MASK")

        tensor = preprocess(resize(image, SERVED), processing["mean"], processing["std"], processing["scale"])
        expected = logits_to_mask(runner.infer({"image": tensor})["logits"][0], (height, width))
        assert served.shape == (height, width) and served.dtype == np.uint8
        np.testing.assert_array_equal(served, expected)
        classes |= set(np.unique(served).tolist())
    assert len(classes) >= 3, classes  # trained weights on scenes: real masks, not one class


def test_the_preprocessing_step_answers_a_bad_image_with_an_error(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(artifact, tmp_path, name="seg", ensemble=True)
    pre = load_step(tmp_path / "seg_preprocess", monkeypatch)
    (response,) = pre.execute([InferenceRequest([Tensor("IMAGE", np.zeros((8, 8, 4), np.uint8))])])
    assert response.error is not None
    assert "RGB uint8 [H, W, 3]" in response.error.message()


def test_the_repository_carries_the_runtime_code_it_runs(artifact: Path, tmp_path: Path) -> None:
    """The Python steps import an unchanged copy of the runtime's code, which needs nothing else
    of segexport: a fresh interpreter that can't see the package (-I) imports it from there."""
    write(artifact, tmp_path, name="seg", ensemble=True)
    package = Path(__file__).resolve().parents[1] / "segexport"
    for step in ("seg_preprocess", "seg_postprocess"):
        version = tmp_path / step / "1"
        for relative in ("errors.py", "runtime/preprocessing.py", "runtime/geometry.py"):
            assert (version / "segexport" / relative).read_bytes() == (package / relative).read_bytes()
        code = (
            f"import sys; sys.path.insert(0, {str(version)!r})\n"
            "import numpy as np, segexport.runtime.geometry as p\n"
            f"assert p.__file__.startswith({str(version)!r}), p.__file__\n"
            "print(p.logits_to_mask(np.arange(8, dtype=np.float32).reshape(2, 2, 2), (3, 3)).tolist())\n"
        )
        result = subprocess.run(
            [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == str([[1, 1, 1]] * 3)
