"""`segexport onnx --head mask|logits+mask`: an ArgMax in the graph, verified like every output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from segexport.cli import main
from segexport.compare import Tolerance, compare_arrays
from segexport.errors import SegexportError
from segexport.export import ExportRequest, add_mask_head, export_onnx, plan_export
from segexport.runtime import open_artifact
from tests.emulator.models import MODELS


def _logits_only() -> onnx.ModelProto:
    model = onnx.load_from_string(MODELS["conv"]().onnx)
    mask = next(o for o in model.graph.output if o.name == "mask")
    model.graph.output.remove(mask)
    for node in [n for n in model.graph.node if n.op_type == "ArgMax" or n.output[0] == "mask"]:
        model.graph.node.remove(node)
    return model


def test_a_graph_that_has_a_mask_already_is_refused() -> None:
    with pytest.raises(SegexportError, match="already has a tensor named mask"):
        add_mask_head(onnx.load_from_string(MODELS["conv"]().onnx), "logits", "mask", "uint8")


@pytest.mark.parametrize(("head", "dtype"), [("mask", "uint8"), ("logits+mask", "int32")])
def test_mask_head_is_the_argmax_of_the_logits(head: str, dtype: str) -> None:
    model = add_mask_head(_logits_only(), "logits", head, dtype)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == (["mask"] if head == "mask" else ["logits", "mask"])
    image = np.random.default_rng(0).normal(size=(2, 3, 12, 20)).astype(np.float32)
    outputs = dict(zip(names, session.run(None, {"image": image}), strict=True))
    logits = ort.InferenceSession(_logits_only().SerializeToString()).run(None, {"image": image})[0]
    assert outputs["mask"].dtype == np.dtype(dtype) and outputs["mask"].shape == (2, 12, 20)
    assert np.array_equal(outputs["mask"], logits.argmax(axis=1))
    declared = [d.dim_param or d.dim_value for d in model.graph.output[-1].type.tensor_type.shape.dim]
    assert declared == ["N", "H", "W"]


def test_class_ids_are_judged_by_agreement() -> None:
    reference = np.zeros((1, 10, 10), np.uint8)
    candidate = reference.copy()
    assert compare_arrays("mask", reference, candidate, Tolerance(), labels=False).passed
    candidate[0, 0, :2] = 3
    result = compare_arrays("mask", reference, candidate, Tolerance(min_agreement=0.99), labels=False)
    assert not result.passed and result.agreement == pytest.approx(0.98)
    assert result.reasons == ["argmax agreement 98.0000% < 99.00%"]
    # without an agreement bound (the export stage's tolerance) ids take FP32's 99.9%
    assert not compare_arrays("mask", reference, candidate, Tolerance(), labels=False).passed


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ExportRequest("unet-small", head="argmax"), "--head must be one of logits, mask, logits\\+mask"),
        (ExportRequest("unet-small", head="mask", mask_dtype="int8"), "--mask-dtype must be one of"),
        (ExportRequest("unet-small", head="mask", num_classes=300), "uint8 holds 256 classes"),
        (ExportRequest("unet-small", head="mask", num_classes=1), "at least 2 classes"),
        (ExportRequest("maskrcnn-mask-head", head="mask"), "no per-pixel class logits"),
    ],
)
def test_impossible_heads_are_refused_up_front(request_: ExportRequest, message: str) -> None:
    with pytest.raises(SegexportError, match=message):
        plan_export(request_)


def test_cli_refuses_a_head_without_logits_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["onnx", "--model", "maskrcnn-mask-head", "--head", "mask", "--out", str(tmp_path / "a")]
    )
    assert result.exit_code == 2
    assert "segexport: error: --head mask: maskrcnn-mask-head has no per-pixel class logits" in result.output
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_mask_artifact_is_verified_and_recorded(tmp_path: Path) -> None:
    out = tmp_path / "unet-small"
    manifest = export_onnx(
        ExportRequest("unet-small", weights="demo", size=(64, 64), head="mask", out_dir=out)
    )
    assert [o["name"] for o in manifest["outputs"]] == ["mask"]
    assert manifest["head"]["mask"] == {
        "output": "mask",
        "dtype": "uint8",
        "argmax_of": "logits",
        "axis": 1,
        "resize": "nearest",
    }
    for shape in manifest["verification"]["fp32"]["shapes"]:
        (mask,) = shape["outputs"]
        assert mask["name"] == "mask" and mask["ids"] and mask["agreement"] >= 0.999
    runner, _ = open_artifact(out)
    image = np.random.default_rng(1).normal(size=(1, 3, 64, 64)).astype(np.float32)
    assert runner.infer({"image": image})["mask"].shape == (1, 64, 64)


def test_precision_measurement_compares_a_mask_with_pytorchs_argmax() -> None:
    from segexport.quantize import EvalSet, measure

    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(1, 4, 6, 6)).astype(np.float32) for _ in range(3)]

    class MaskRunner:
        name, output_names = "masks", ["mask"]

        def __init__(self) -> None:
            self.calls = 0

        def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            mask = logits[self.calls].argmax(axis=1).astype(np.uint8)
            if self.calls == 2:
                mask[0, 0, :3] = (mask[0, 0, :3] + 1) % 4  # 3 of 108 pixels flipped
            self.calls += 1
            return {"mask": mask}

    evalset = EvalSet([np.zeros((1, 3, 6, 6), np.float32)] * 3, None, logits, ("a", "b", "c", "d"))
    figures = measure(MaskRunner(), evalset, threads=1)  # type: ignore[arg-type]
    assert figures["agreement"] == pytest.approx(1 - 3 / 108)
