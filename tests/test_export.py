"""`segexport onnx`: every zoo model exports, verifies and quantizes; size plans,
dynamic axes and the manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from segexport import precision, readiness
from segexport.compare import Tolerance
from segexport.errors import SegexportError, VerificationError
from segexport.export import ExportRequest, export_onnx, plan_export
from segexport.runtime import open_artifact
from segexport.shapes import InputShape
from segexport.zoo import create_model, get_spec, list_models
from tests.qdq_checks import assert_qdq_well_formed, random_int8

# FCN's fc6/fc7 are 4096 wide (102M + 16M parameters); a narrow head keeps the test fast
# while exercising the same graph.
SMALL_OPTIONS = {"fcn": {"fc_channels": 64}, "fcn8s": {"fc_channels": 64}}
# Readiness findings a zoo graph keeps (none is an error; README lists them): opset 18 is inside
# every range, Squeeze axes are explicit, depthwise convs stay float in INT8. SETR resizes its
# position embedding bicubically (as ViT weights expect): the operator lists say nearest/linear,
# the parser maps cubic to its bicubic, so that Resize stays "uncertain".
EXPECTED_NON_ERRORS: dict[str, set[tuple[str, str]]] = {"setr": {("resize-mode", "uncertain")}}


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_exports_verifies_and_quantizes(name: str, tmp_path: Path) -> None:
    """One export per zoo model (exports are the slow part), checked as FP32 and as INT8."""
    spec = get_spec(name)
    size = (64, 64) if spec.input_kind == "image" else None
    manifest = export_onnx(
        ExportRequest(name, size=size, out_dir=tmp_path / name, model_options=SMALL_OPTIONS.get(name, {}))
    )
    shapes = manifest["verification"]["fp32"]["shapes"]
    assert len(shapes) >= 3
    assert any(int(s["shape"].split("x")[0]) > 1 for s in shapes)
    for shape in shapes:
        assert shape["passed"], shape
        for out in shape["outputs"]:
            assert out["rel_l2"] <= 1e-4
    assert [o["name"] for o in manifest["outputs"]] == list(spec.output_names)
    graph_input = manifest["inputs"][0]["shape"]
    assert graph_input[0] in ("batch", "num_rois")
    if spec.input_kind == "image":
        assert graph_input[2:] == ["height", "width"]
        other_aspects = {s["shape"] for s in shapes} - {"1x64x64", "2x64x64"}
        assert other_aspects, "no shape with another aspect ratio was verified"
    assert not readiness.findings_for(manifest["trt_readiness"], "model.onnx", "10.3", "error")
    fp32 = onnx.load(str(tmp_path / name / "model.onnx"))
    int8 = random_int8(tmp_path / name)
    assert assert_qdq_well_formed(int8) > 0
    graphs = {"fp32": fp32, "fp16": precision.to_fp16(fp32), "int8": int8}
    for tag, graph in graphs.items():
        onnx.checker.check_model(graph, full_check=True)  # valid ONNX: topological order, types
        findings = readiness.check_model(graph, ["10.3", "10.x", "11.x"])
        errors = [f for f in findings if f.severity == "error"]
        assert not errors, (tag, errors[:3])
        kept = {(f.rule, f.severity) for f in findings}
        assert kept == EXPECTED_NON_ERRORS.get(name, set()), (tag, kept)


def test_manifest_records_what_users_need(small_artifact: Path) -> None:
    import json

    manifest = json.loads((small_artifact / "manifest.json").read_text())
    assert manifest["model"]["name"] == "unet-small"
    assert manifest["model"]["num_classes"] == len(manifest["model"]["class_names"]) == 2
    assert manifest["preprocessing"]["color_order"] == "RGB"
    assert len(manifest["preprocessing"]["mean"]) == 3
    assert manifest["dynamic_axes"] == {"batch": [1, 16], "height": [32, 1024], "width": [32, 1024]}
    assert manifest["size_rule"] == {"divisible_by": 16}
    assert manifest["onnx"]["opset"] == 18
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime", "onnxsim"}
    assert set(manifest["files"]) == {"model.onnx", "reference.npz"}
    assert len(manifest["files"]["model.onnx"]["sha256"]) == 64
    assert manifest["verification"]["fp32"]["passed"] is True


@pytest.mark.slow
@pytest.mark.parametrize("name", ["segformer", "deeplabv3plus", "unet", "setr"])
def test_exported_at_512_runs_at_other_batch_and_aspect(name: str, tmp_path: Path) -> None:
    """The issue's guarantee: exported at 1x512x512, matches PyTorch at 4x512x512 and 1x384x640."""
    torch.manual_seed(7)
    reference = create_model(name)
    weights = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), weights)
    out = tmp_path / "artifact"
    export_onnx(
        ExportRequest(
            name,
            size=(512, 512),
            batch=1,
            weights=weights,
            out_dir=out,
            verify_shapes=[InputShape(1, 384, 640)],
        )
    )
    runner, _ = open_artifact(out)
    generator = torch.Generator().manual_seed(0)
    for shape in [(4, 3, 512, 512), (1, 3, 384, 640)]:
        image = torch.randn(*shape, generator=generator)
        with torch.inference_mode():
            expected = reference(image).numpy()
        actual = runner.infer({"image": image.numpy()})["logits"]
        rel_l2 = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
        assert rel_l2 <= 1e-4, (shape, rel_l2)


def test_plan_refuses_sizes_against_the_rule() -> None:
    with pytest.raises(SegexportError, match=r"--size: segformer-b0 needs .* divisible by .* 32"):
        plan_export(ExportRequest("segformer", size=(500, 512)))
    with pytest.raises(SegexportError, match="--max-size"):
        plan_export(ExportRequest("unet", max_size=(1000, 1000)))


def test_plan_refuses_shapes_outside_the_range() -> None:
    with pytest.raises(SegexportError, match="outside the range"):
        plan_export(ExportRequest("unet", size=(64, 64), verify_shapes=[InputShape(32, 64, 64)]))
    with pytest.raises(SegexportError, match="--batch"):
        plan_export(ExportRequest("unet", batch=8, max_batch=4))


def test_default_check_shapes_cover_batch_and_aspect() -> None:
    plan = plan_export(ExportRequest("segformer"))
    assert [str(s) for s in plan.verify_shapes] == ["1x512x512", "2x512x512", "1x384x640"]


def test_dynamic_axes_are_named_in_the_onnx(small_artifact: Path) -> None:
    model = onnx.load(str(small_artifact / "model.onnx"))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]


def test_quarter_resolution_output_is_declared(tmp_path: Path) -> None:
    manifest = export_onnx(
        ExportRequest(
            "segformer", size=(64, 64), out_dir=tmp_path / "a", model_options={"full_resolution": False}
        )
    )
    assert manifest["outputs"][0]["shape"] == ["batch", 150, "height/4", "width/4"]


def test_failed_verification_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(VerificationError, match="differs from PyTorch"):
        export_onnx(
            ExportRequest("unet-small", size=(64, 64), out_dir=out, tolerance=Tolerance(max_rel_l2=1e-12))
        )
    assert list(tmp_path.iterdir()) == []
