"""FP16 and INT8 graphs: structure on every zoo model, accuracy on the demo checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from segexport import precision
from segexport.errors import SegexportError
from segexport.export import ExportRequest, export_onnx
from segexport.quantize import QuantizeRequest, calibration_batches, quantize_artifact
from segexport.runtime.artifacts import sha256_file
from tests.qdq_checks import assert_qdq_well_formed, int8_conv_weights

DEMO_MODELS = ["segformer-b0", "unet-small", "deeplabv3plus-mobilenetv2"]


def test_fp16_keeps_sensitive_ops_fp32_without_cast_round_trips(tmp_path: Path) -> None:
    export_onnx(ExportRequest("segformer", size=(64, 64), out_dir=tmp_path / "a"))
    fp16 = precision.to_fp16(onnx.load(str(tmp_path / "a" / "model.onnx")))
    assert precision.cast_round_trips(fp16) == []
    inferred = onnx.shape_inference.infer_shapes(fp16)
    types = {
        v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]
    }
    layer_norms = [n for n in fp16.graph.node if n.op_type == "LayerNormalization"]
    softmaxes = [n for n in fp16.graph.node if n.op_type == "Softmax"]
    assert layer_norms and softmaxes
    for node in layer_norms + softmaxes:
        assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.name
    convs = [n for n in fp16.graph.node if n.op_type == "Conv"]
    assert all(types.get(n.input[0]) == onnx.TensorProto.FLOAT16 for n in convs[1:])
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_cast_round_trip_removal() -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="first"),
        helper.make_node("Cast", ["a"], ["a16"], to=TensorProto.FLOAT16, name="down"),
        helper.make_node("Cast", ["a16"], ["a32"], to=TensorProto.FLOAT, name="up"),
        helper.make_node("Relu", ["a32"], ["y"], name="second"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    assert precision.cast_round_trips(model) == ["down"]
    assert precision.remove_cast_round_trips(model) == 1
    assert [n.name for n in model.graph.node] == ["first", "second"]
    assert model.graph.node[1].input[0] == "a"


def _demo_artifact(name: str, root: Path) -> Path:
    out = root / name
    export_onnx(ExportRequest(name, weights="demo", size=(128, 128), out_dir=out))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", DEMO_MODELS)
def test_demo_precisions_meet_targets(name: str, tmp_path: Path) -> None:
    artifact = _demo_artifact(name, tmp_path)
    manifest = quantize_artifact(QuantizeRequest(artifacts=artifact, int8_cpu=True))
    results = manifest["precisions"]
    assert results["fp32"]["agreement"] >= 0.9999
    assert results["fp16"]["agreement"] >= 0.995
    for scheme_name in ("int8", "int8-cpu"):
        assert results[scheme_name]["agreement"] >= 0.99
        assert results["fp32"]["miou"] - results[scheme_name]["miou"] <= 0.005
        assert results[scheme_name]["calibration"]["images"] == 64
        graph = onnx.load(str(artifact / f"model.{scheme_name}.onnx"))
        assert_qdq_well_formed(graph, precision.INT8_SCHEMES[scheme_name])
    assert results["int8-cpu"]["scheme"]["unsigned_activations"] is True
    assert {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx", "calib.json"} <= set(
        manifest["files"]
    )
    cache = json.loads((artifact / "calib.json").read_text())
    assert cache["graph_sha256"] == manifest["files"]["model.onnx"]["sha256"]


@pytest.fixture(scope="module")
def unet_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _demo_artifact("unet-small", tmp_path_factory.mktemp("demo"))


def test_stale_calibration_cache_is_refused(unet_demo: Path, tmp_path: Path) -> None:
    stale = tmp_path / "calib.json"
    stale.write_text(json.dumps({"graph_sha256": "0" * 64, "method": "minmax", "images": 1, "ranges": {}}))
    with pytest.raises(SegexportError, match="calibration cache is for another graph"):
        quantize_artifact(QuantizeRequest(artifacts=unet_demo, fp16=False, calib_cache=stale, force=True))


def test_calibration_folder_errors_and_odd_images(unet_demo: Path, tmp_path: Path) -> None:
    manifest = json.loads((unet_demo / "manifest.json").read_text())
    with pytest.raises(SegexportError, match="does not exist"):
        calibration_batches(str(tmp_path / "missing"), 8, (128, 128), manifest, print)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SegexportError, match="holds no images"):
        calibration_batches(str(empty), 8, (128, 128), manifest, print)
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.new("L", (50, 70), 128).save(odd / "gray.png")
    Image.new("RGBA", (200, 100), (10, 20, 30, 40)).save(odd / "rgba.png")
    Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(odd / "deep.png")
    messages: list[str] = []
    with pytest.warns(UserWarning, match="only 3 calibration images"):
        batches = calibration_batches(str(odd), 8, (128, 128), manifest, messages.append)
    assert [b["image"].shape for b in batches] == [(1, 3, 128, 128)] * 3
    assert any("recommended" in m for m in messages)
    (odd / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(SegexportError, match="unreadable image"):
        calibration_batches(str(odd), 8, (128, 128), manifest, print)


def test_random_weight_artifacts_are_refused(small_artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "a"
    shutil.copytree(small_artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["weights"] = None
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SegexportError, match="random weights"):
        quantize_artifact(QuantizeRequest(artifacts=copy))


def test_sensitive_layers_stay_float_until_agreement_is_met(unet_demo: Path, tmp_path: Path) -> None:
    """Holds on any CPU: TensorRT's graph is checked with emulated Q/DQ (no ISA-dependent
    kernels), and the assertions are about the fallback's rules, not a machine's figures."""
    plain = quantize_artifact(QuantizeRequest(artifacts=unet_demo, fp16=False, force=True, eval_images=8))[
        "precisions"
    ]["int8"]
    assert plain["sensitivity_fallback"] == [] and plain["layers_measured"] == 0
    target = min(1.0, plain["agreement"] + 0.002)
    guarded = quantize_artifact(
        QuantizeRequest(artifacts=unet_demo, fp16=False, force=True, min_agreement=target, eval_images=8)
    )["precisions"]["int8"]
    assert guarded["agreement_without_fallback"] == plain["agreement"]
    assert guarded["layers_measured"] > 0
    fallback = guarded["sensitivity_fallback"]
    assert fallback, "no layer was kept float"
    assert {f["node"] for f in fallback} <= set(guarded["kept_float"])
    assert all(f["benefit"] > 0 and f["cost"] > 0 for f in fallback)
    assert 0 < guarded["fallback_cost_share"] <= 1
    if guarded["agreement"] < target:  # allowed only when every layer that helps is float
        assert len(fallback) == guarded["layers_that_help"]
    assert guarded["qdq_pairs"] < plain["qdq_pairs"]


def test_quantize_is_deterministic(unet_demo: Path, tmp_path: Path) -> None:
    """The same command on the same inputs writes byte-identical INT8 graphs, fallback included."""
    digests = []
    for run in range(2):
        artifact = tmp_path / f"run{run}"
        shutil.copytree(unet_demo, artifact)
        manifest = quantize_artifact(
            QuantizeRequest(
                artifacts=artifact,
                fp16=False,
                int8_cpu=True,
                force=True,
                min_agreement=0.999,
                calib_size=8,
                eval_images=2,
            )
        )
        assert any(manifest["precisions"][s]["layers_measured"] for s in ("int8", "int8-cpu")), (
            "no fallback ran"
        )
        digests.append(
            {name: sha256_file(artifact / name) for name in ("model.int8.onnx", "model.int8-cpu.onnx")}
        )
    assert digests[0] == digests[1]


@pytest.mark.parametrize("isa", ["avx2", "vnni"])
def test_int8_cpu_records_its_target_cpu(unet_demo: Path, tmp_path: Path, isa: str) -> None:
    from segexport.runtime.cpu_isa import detect_cpu_isa

    artifact = tmp_path / "a"
    shutil.copytree(unet_demo, artifact)
    manifest = quantize_artifact(
        QuantizeRequest(artifacts=artifact, fp16=False, int8=False, int8_cpu=True, cpu_isa=isa, eval_images=4)
    )
    result = manifest["precisions"]["int8-cpu"]
    assert result["cpu_isa"]["target"] == isa and result["cpu_isa"]["detected_here"] == detect_cpu_isa()
    assert result["scheme"]["reduce_range"] == (isa == "avx2")
    graph = onnx.load(str(artifact / "model.int8-cpu.onnx"))
    largest = max(int(np.abs(weights).max()) for weights in int8_conv_weights(graph))
    assert (largest <= 64) == (isa == "avx2"), largest
    with pytest.raises(SegexportError, match="--cpu-isa 'sse'"):
        quantize_artifact(QuantizeRequest(artifacts=artifact, int8_cpu=True, cpu_isa="sse", force=True))


def test_chained_cast_round_trips_are_all_removed() -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Relu", ["x"], ["t0"], name="first")]
    for index in range(4):
        target = TensorProto.FLOAT16 if index % 2 == 0 else TensorProto.FLOAT
        nodes.append(
            helper.make_node("Cast", [f"t{index}"], [f"t{index + 1}"], to=target, name=f"cast{index}")
        )
    nodes.append(helper.make_node("Relu", ["t4"], ["y"], name="last"))
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    removed = precision.remove_cast_round_trips(model)
    assert [n.name for n in model.graph.node] == ["first", "last"]
    assert removed == 2 and precision.cast_round_trips(model) == []
    onnx.checker.check_model(model)


def test_int8_qdq_sits_on_compute_inputs_only() -> None:
    """x -> convA -> y -> convB (kept float) and y -> Add(y, x): neither the kept-float conv nor
    the residual Add may read an INT8-rounded tensor; convA's output is not quantized; the
    depthwise convC (1 channel per group) stays float; the graph is valid ONNX."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "wa": rng.normal(size=(4, 4, 3, 3)),
        "wb": rng.normal(size=(4, 4, 3, 3)),
        "wc": rng.normal(size=(4, 1, 3, 3)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="convA", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "wb"], ["b"], name="convB", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "wc"], ["c"], name="convC", pads=[1, 1, 1, 1], group=4),
        helper.make_node("Add", ["a", "x"], ["r"], name="residual"),
        helper.make_node("Sum", ["b", "c", "r"], ["s"], name="sum"),
        helper.make_node("Conv", ["s", "wa"], ["y"], name="head", pads=[1, 1, 1, 1]),
    ]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "g",
        [value("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [value("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    ranges = {name: (-4.0, 4.0) for name in ("x", "a", "b", "c", "r", "s", "y")}
    int8 = precision.to_int8(model, precision.Calibration("minmax", ranges, "sha", 1), keep_float=["convB"])
    onnx.checker.check_model(int8, full_check=True)
    producer = {out: node for node in int8.graph.node for out in node.output}
    reads = {
        node.name: [producer[i].op_type if i in producer else i for i in node.input]
        for node in int8.graph.node
    }
    assert reads["convA"] == ["DequantizeLinear", "DequantizeLinear"]  # data and weights quantized
    assert reads["convB"] == ["Conv", "wb"]  # kept float: reads the float tensor
    assert reads["convC"][0] == "Conv" and reads["convC"][1] == "wc"  # depthwise: float
    assert reads["residual"] == ["Conv", "x"]
    assert "DequantizeLinear" not in reads["sum"]
    assert precision.int8_incapable_convs(model) == ["convC"]


@pytest.mark.slow
def test_roi_head_gets_fp16_and_a_clear_int8_refusal(tmp_path: Path) -> None:
    """maskrcnn-mask-head: FP16 (checked on seeded random RoI features) so `segexport trt --fp16`
    has a graph; INT8 refused with the reason (no RoI-feature calibration data here)."""
    import torch

    from segexport.export import ExportRequest, export_onnx
    from segexport.zoo import create_model

    weights = tmp_path / "mask.pt"
    torch.save(create_model("maskrcnn-mask-head").state_dict(), weights)
    export_onnx(ExportRequest("maskrcnn-mask-head", weights=str(weights), out_dir=tmp_path / "a"))
    with pytest.raises(SegexportError, match="INT8 needs calibration data"):
        quantize_artifact(QuantizeRequest(artifacts=tmp_path / "a", fp16=False, int8=True))
    manifest = quantize_artifact(
        QuantizeRequest(artifacts=tmp_path / "a", fp16=True, int8=False, eval_images=2)
    )
    assert manifest["precisions"]["fp16"]["rel_l2"] < 1e-2
    assert manifest["trt_readiness"]["files"]["model.fp16.onnx"]["counts"]["error"] == 0
