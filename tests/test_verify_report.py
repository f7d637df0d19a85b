"""`segexport verify`: parity of every artifact on real data, its reports, and localisation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from segexport.compare import DEFAULT_TOLERANCES
from segexport.errors import SegexportError
from segexport.runtime import OnnxRuntimeRunner, open_runner
from segexport.runtime.artifacts import describe_files
from segexport.verify import VerifyRequest, verify_artifacts
from segexport.verify_recorded import NO_TENSORRT
from tests.clitools import assert_one_line_error, run


def verify_json(*args: str) -> tuple[int, dict, str]:
    code, stdout, stderr = run("verify", *args, "--json")
    return code, json.loads(stdout), stderr


def copy_artifact(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def revouch(directory: Path) -> None:
    """Rewrite the manifest's checksums, as someone who changed a file on purpose would."""
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"] = describe_files(directory)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def edit_weight(
    path: Path, pick: Callable[[list[onnx.NodeProto]], onnx.NodeProto], change
) -> tuple[str, str]:
    """Apply `change` to the weight of the Conv `pick` chooses; returns (node name, weight name)."""
    model = onnx.load(str(path))
    node = pick([n for n in model.graph.node if n.op_type == "Conv"])
    weight = next(i for i in model.graph.initializer if i.name == node.input[1])
    array = change(onnx.numpy_helper.to_array(weight).copy())
    weight.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), weight.name))
    onnx.save(model, str(path))
    return node.name, weight.name


def middle(nodes: list[onnx.NodeProto]) -> onnx.NodeProto:
    return nodes[len(nodes) // 2]


def by_file(report: dict) -> dict[str, dict]:
    return {artifact["file"]: artifact for artifact in report["artifacts"]}


def test_demo_segformer_fp32_fp16_int8_pass_with_reports(segformer_demo: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "parity.md"
    code, report, stderr = verify_json(
        "--artifacts", str(segformer_demo), "--limit", "16", "--report", str(target)
    )
    assert code == 0, stderr
    assert "16/16 images" in stderr  # progress on stderr, the report alone on stdout
    assert report["ok"] is True and report["model"] == "segformer-b0"
    assert report["against"] == "pytorch" and report["reference"].startswith("pytorch:")
    assert report["data"] == {
        "source": "synthetic",
        "images": 16,
        "size": [128, 128],
        "labels": True,
        "note": None,
    }
    artifacts = by_file(report)
    assert list(artifacts) == ["model.onnx", "model.fp16.onnx", "model.int8.onnx"]
    for artifact in artifacts.values():
        assert artifact["status"] == "passed" and artifact["failures"] == []
        expected = DEFAULT_TOLERANCES[artifact["precision"]]
        assert artifact["tolerance"] == {
            "max_rel_l2": expected.max_rel_l2,
            "min_agreement": expected.min_agreement,
            "max_abs": None,
        }
        (logits,) = artifact["outputs"]
        assert logits["name"] == "logits" and logits["shape"] == [16, 7, 128, 128]
        assert logits["nan"] == logits["nonfinite"] == logits["reference_nonfinite"] == 0
        assert 0.8 <= logits["miou_reference"] <= 0.95  # the demo checkpoint's held-out mIoU
        assert abs(logits["miou"] - logits["miou_reference"]) <= 0.02
        assert 0.0 <= logits["mean_abs"] <= logits["max_abs"]
        assert logits["miou_vs_reference"] <= 1.0 and logits["cosine"] <= 1.0 + 1e-9
        worst = artifact["worst_image"]
        assert 0 <= worst["index"] < 16 and worst["agreement"] <= logits["agreement"]
        png = target.parent / worst["png"]
        with Image.open(png) as picture:
            assert picture.size == (4 * 128, 128) and picture.mode == "RGB"
        assert artifact["localization"] is None
    fp32, fp16, int8 = (
        artifacts[f]["outputs"][0] for f in ("model.onnx", "model.fp16.onnx", "model.int8.onnx")
    )
    assert fp32["agreement"] == 1.0 and fp32["rel_l2"] < 1e-5 and fp32["cosine"] > 0.999999
    assert fp16["agreement"] >= 0.999 and 1e-6 < fp16["rel_l2"] < 2e-3
    assert 0.985 <= int8["agreement"] < 1.0 and 0.01 < int8["rel_l2"] < 0.15 and int8["cosine"] > 0.99
    assert int8["miou_vs_reference"] < fp16["miou_vs_reference"] <= fp32["miou_vs_reference"] == 1.0
    assert report["reports"] == {
        "markdown": str(target),
        "json": str(target.with_suffix(".json")),
        "png": [str(target.parent / a["worst_image"]["png"]) for a in artifacts.values()],
    }
    assert json.loads(target.with_suffix(".json").read_text())["artifacts"] == report["artifacts"]
    markdown = target.read_text()
    assert markdown.startswith("# segexport verify: segformer-b0 — PASSED")
    assert "| `model.int8.onnx` | int8 | passed | " in markdown
    assert f"| data 16x128x128 | logits | {fp32['max_abs']:.3g} |" in markdown
    assert (
        f"![worst image of model.fp16.onnx]({artifacts['model.fp16.onnx']['worst_image']['png']})" in markdown
    )
    assert not list(segformer_demo.glob("verify_report*"))  # --report: nothing in the artifact dir


def test_conv_weight_times_minus_three_is_named_first_divergence(
    segformer_demo: Path, tmp_path: Path
) -> None:
    """A trained model: in random-weight U-Nets the bottleneck hardly reaches the logits."""
    copy = copy_artifact(segformer_demo, tmp_path / "a")
    node, weight = edit_weight(copy / "model.onnx", middle, lambda w: w * -3)
    revouch(copy)
    code, report, stderr = verify_json("--artifacts", str(copy), "--precision", "fp32", "--limit", "8")
    message = "model.onnx: output logits: rel L2"
    assert_one_line_error(code, stderr, message, exit_code=1, after_progress=True)
    assert report["ok"] is False and [a["file"] for a in report["artifacts"]] == ["model.onnx"]
    fp32 = report["artifacts"][0]
    assert fp32["status"] == "failed"
    assert fp32["outputs"][0]["agreement"] < 0.95 and fp32["outputs"][0]["rel_l2"] > 0.1
    localization = fp32["localization"]
    assert localization["reference"] == "a fresh FP32 export of the PyTorch model"
    assert localization["images"] == 2 and localization["tensors_compared"] > 300
    found = localization["first_divergence"]
    assert found["node"] == node and found["op_type"] == "Conv"
    assert found["rel_l2"] > 1.0 and found["input_rel_l2"] < 1e-5
    assert [w["name"] for w in found["weights"]] == [weight]
    assert found["weights"][0]["rel_l2"] == pytest.approx(4.0)
    module = weight.removeprefix("model.").rsplit(".", 1)[0]
    assert found["module"] == f"{module} (Conv2d)"  # from the exporter's name scopes
    markdown = (copy / "verify_report.md").read_text()
    assert f"**First divergence: node `{node}` (Conv), module `{module} (Conv2d)`**" in markdown
    assert (copy / "verify_report.json").is_file() and (copy / "verify_report_model_onnx.png").is_file()


def test_nan_weight_is_reported_and_localised(small_artifact: Path, tmp_path: Path) -> None:
    copy = copy_artifact(small_artifact, tmp_path / "a")

    def poison(weight: np.ndarray) -> np.ndarray:
        weight.flat[0] = np.nan
        return weight

    node, weight = edit_weight(copy / "model.onnx", lambda convs: convs[2], poison)
    revouch(copy)
    code, report, stderr = verify_json("--artifacts", str(copy), "--limit", "4")
    assert_one_line_error(code, stderr, "NaN", exit_code=1, after_progress=True)
    (logits,) = by_file(report)["model.onnx"]["outputs"]
    assert logits["nan"] > 0 and logits["nonfinite"] == logits["nan"] and logits["reference_nonfinite"] == 0
    assert any("NaN" in reason for reason in logits["reasons"])
    found = by_file(report)["model.onnx"]["localization"]["first_divergence"]
    assert found["node"] == node and found["op_type"] == "Conv" and found["nan"] > 0
    assert found["weights"][0]["name"] == weight and found["weights"][0]["nan"] == 1


def test_changed_file_is_refused_before_any_work(small_artifact: Path, tmp_path: Path) -> None:
    copy = copy_artifact(small_artifact, tmp_path / "a")
    with (copy / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    code, stdout, stderr = run("verify", "--artifacts", str(copy), "--json")
    assert_one_line_error(code, stderr, "does not match the manifest")
    assert json.loads(stdout)["ok"] is False
    assert not (copy / "verify_report.md").exists()


@pytest.mark.skipif(find_spec("tensorrt") is not None, reason="TensorRT is importable here")
def test_engine_is_skipped_without_tensorrt_and_unlisted_files_are_refused(
    small_artifact: Path, tmp_path: Path
) -> None:
    copy = copy_artifact(small_artifact, tmp_path / "a")
    (copy / "model.engine").write_bytes(b"not really an engine")
    revouch(copy)
    shutil.copy(copy / "model.onnx", copy / "model.extra.onnx")  # not in the manifest
    code, report, stderr = verify_json("--artifacts", str(copy), "--limit", "2")
    assert code == 0, stderr
    artifacts = by_file(report)
    assert artifacts["model.engine"]["status"] == "skipped"
    assert artifacts["model.engine"]["reason"] == NO_TENSORRT
    assert artifacts["model.extra.onnx"]["status"] == "skipped"
    assert "not listed in manifest.json" in artifacts["model.extra.onnx"]["reason"]
    assert artifacts["model.onnx"]["status"] == "passed"
    code, report, _ = verify_json("--artifacts", str(copy), "--precision", "engine")
    assert code == 0 and [a["status"] for a in report["artifacts"]] == ["skipped", "skipped"]


def test_against_onnx_random_data_and_extra_shapes(small_artifact: Path, tmp_path: Path) -> None:
    copy = copy_artifact(small_artifact, tmp_path / "a")
    model = onnx.load(str(copy / "model.onnx"))
    onnx.save(model, str(copy / "model.fp16.onnx"))  # an "FP16" file that is the FP32 graph
    revouch(copy)
    code, report, stderr = verify_json(
        "--artifacts",
        str(copy),
        "--against",
        "onnx",
        "--data",
        "random",
        "--limit",
        "3",
        "--shapes",
        "2x64x96",
    )
    assert code == 0, stderr
    assert report["reference"] == "onnxruntime:model.onnx"
    assert report["data"]["source"] == "random" and report["data"]["labels"] is False
    artifacts = by_file(report)
    assert artifacts["model.onnx"]["status"] == "skipped"
    fp16 = artifacts["model.fp16.onnx"]
    assert fp16["status"] == "passed" and fp16["outputs"][0]["rel_l2"] == 0.0
    assert fp16["outputs"][0]["miou"] is None
    assert [s["shape"] for s in fp16["shapes"]] == ["2x64x96"] and fp16["shapes"][0]["passed"]


def test_folder_data_with_and_without_masks(small_artifact: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for index, size in enumerate([(64, 64), (80, 48), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            data / "images" / f"{index}.png"
        )
        Image.fromarray(rng.integers(0, 2, size, dtype=np.uint8)).save(data / "masks" / f"{index}.png")
    (data / "classes.txt").write_text("background\nobject\n")
    report = verify_artifacts(
        VerifyRequest(artifacts=small_artifact, data=str(data), report=tmp_path / "r.md")
    )
    assert report.passed and report.data["images"] == 3 and report.data["labels"] is True
    logits = report.artifacts[0].outputs[0]
    assert logits.shape == [3, 2, 64, 64] and logits.miou is not None and logits.miou_reference is not None
    shutil.rmtree(data / "masks")
    (data / "classes.txt").unlink()
    report = verify_artifacts(
        VerifyRequest(artifacts=small_artifact, data=str(data), report=tmp_path / "r.md")
    )
    assert report.data["labels"] is False and report.artifacts[0].outputs[0].miou is None


def test_bad_requests_are_one_line_errors(small_artifact: Path, tmp_path: Path) -> None:
    result = run("verify", "--artifacts", str(small_artifact), "--precision", "int4")
    assert result[0] == 2 and "'int4' is not one of" in result[2]
    code, _, stderr = run("verify", "--artifacts", str(small_artifact), "--shapes", "32x64x64")
    assert_one_line_error(code, stderr, "--shapes 32x64x64 is outside the artifact's range")
    code, _, stderr = run("verify", "--artifacts", str(small_artifact), "--shapes", "1x72x64")
    assert_one_line_error(code, stderr, "divisible by")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, stderr = run("verify", "--artifacts", str(small_artifact), "--data", str(empty))
    assert_one_line_error(code, stderr, "holds no images", after_progress=True)
    code, _, stderr = run("verify", "--artifacts", str(small_artifact), "--precision", "int8")
    assert_one_line_error(code, stderr, "no int8 artifact in its manifest (it lists model.onnx)")
    code, _, stderr = run("verify", "--artifacts", str(tmp_path / "nothing"))
    assert_one_line_error(code, stderr, "holds no exported model")
    assert not list(small_artifact.glob("verify_report*"))


def test_open_runner_dispatches_on_suffix(small_artifact: Path) -> None:
    manifest = json.loads((small_artifact / "manifest.json").read_text())
    assert isinstance(open_runner(small_artifact, "model.onnx", manifest), OnnxRuntimeRunner)
    with pytest.raises(SegexportError, match=r"no runner for \.txt"):
        open_runner(small_artifact, "notes.txt", manifest)
    # Engines go through segexport.runtime.engine, which checks the manifest before TensorRT sees a byte.
    with pytest.raises(SegexportError, match=r"not listed in manifest\.json|TensorRT is not available"):
        open_runner(small_artifact, "model.engine", manifest)


@pytest.mark.slow
def test_verify_command_end_to_end(segformer_demo: Path, tmp_path: Path) -> None:
    """The installed command over 64 images of all three precisions, in a fresh process."""
    copy = copy_artifact(segformer_demo, tmp_path / "a")
    result = subprocess.run(
        [sys.executable, "-m", "segexport", "verify", "--artifacts", str(copy), "--limit", "64"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((copy / "verify_report.json").read_text())
    assert [a["status"] for a in report["artifacts"]] == ["passed"] * 3
    assert report["data"]["images"] == 64
