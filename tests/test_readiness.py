"""The offline TensorRT readiness check: one small hand-built graph per rule, plus a clean one.

Each broken graph breaks exactly one rule; the test asserts that rule fires and no other.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segexport import readiness
from segexport.errors import SegexportError
from segexport.readiness import rules
from segexport.trt_rules import TARGETS, load_release, releases
from tests.manifests import write_manifest

FLOAT = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=18) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _image(name="x", channels=4):
    return helper.make_tensor_value_info(name, FLOAT, ["batch", channels, "height", "width"])


def _out(name="y", elem=FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def _qdq_conv(group=1, channels=4, weights_quantized=True, data_quantized=True):
    """x -> [Q/DQ] -> Conv(W per-channel [Q/DQ]) -> y, the pattern TensorRT fuses into INT8."""
    weight = np.random.default_rng(0).normal(size=(channels, channels // group, 3, 3)).astype(np.float32)
    nodes, inits = [], [("W", weight)]
    data, kernel = "x", "W"
    if data_quantized:
        inits += [("s", np.array(0.05, np.float32)), ("z", np.array(0, np.int8))]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_x"),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_x"),
        ]
        data = "xd"
    if weights_quantized:
        scale = (np.abs(weight).reshape(channels, -1).max(axis=1) / 127).astype(np.float32)
        inits += [
            ("Wq", np.round(weight / scale[:, None, None, None]).astype(np.int8)),
            ("ws", scale),
            ("wz", np.zeros(channels, np.int8)),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["Wq", "ws", "wz"], ["Wd"], name="dq_w", axis=0))
        kernel = "Wd"
        inits = [i for i in inits if i[0] != "W"]
    nodes.append(helper.make_node("Conv", [data, kernel], ["y"], name="conv", pads=[1, 1, 1, 1], group=group))
    return nodes, inits


def clean_graph() -> onnx.ModelProto:
    nodes, inits = _qdq_conv()
    nodes[-1].output[0] = "c"
    nodes += [
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Resize", ["r", "", "scales"], ["u"], name="resize", mode="linear"),
        helper.make_node("ReduceMean", ["u", "axes"], ["m"], name="mean", keepdims=1),
        helper.make_node("Squeeze", ["m", "sq_axes"], ["y"], name="squeeze"),
    ]
    inits += [
        ("scales", np.array([1, 1, 2, 2], np.float32)),
        ("axes", np.array([1], np.int64)),
        ("sq_axes", np.array([1], np.int64)),
    ]
    return _model(nodes, [_image()], [_out(shape=["batch", "height2", "width2"])], inits)


def _rules_fired(model: onnx.ModelProto, target: str) -> dict[str, set[str]]:
    fired: dict[str, set[str]] = {}
    for finding in readiness.check_model(model, [target]):
        fired.setdefault(finding.rule, set()).add(finding.severity)
        assert finding.source, finding
    return fired


@pytest.mark.parametrize("target", list(TARGETS))
def test_clean_graph_has_no_findings(target: str) -> None:
    onnx.checker.check_model(clean_graph(), full_check=True)
    assert readiness.check_model(clean_graph(), [target]) == []


def _relu_on(elem: int) -> onnx.ModelProto:
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    return _model([node], [helper.make_tensor_value_info("x", elem, [1, 4])], [_out("y", elem)])


def _cumsum_with_runtime_axis() -> onnx.ModelProto:
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], name="cumsum")
    axis = helper.make_tensor_value_info("axis", TensorProto.INT64, [])
    return _model([node], [_image(), axis], [_out()])


def _squeeze_without_axes(shape) -> onnx.ModelProto:
    node = helper.make_node("Squeeze", ["x"], ["y"], name="squeeze")
    return _model([node], [helper.make_tensor_value_info("x", FLOAT, shape)], [_out()])


def _resize(**attributes) -> onnx.ModelProto:
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", **attributes)
    return _model([node], [_image()], [_out()], [("scales", np.array([1, 1, 2, 2], np.float32))])


def _qdq(scale, zero, axis=1, opset=18) -> onnx.ModelProto:
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q", axis=axis),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq", axis=axis),
    ]
    return _model(nodes, [_image()], [_out()], [("s", scale), ("z", zero)], opset=opset)


def _uint8_inside() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Cast", ["x"], ["u"], name="to_u8", to=TensorProto.UINT8),
        helper.make_node("Cast", ["u"], ["y"], name="back", to=FLOAT),
    ]
    return _model(nodes, [_image()], [_out()])


def _no_input_shape() -> onnx.ModelProto:
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    return _model([node], [helper.make_tensor_value_info("x", FLOAT, None)], [_out()])


def _det() -> onnx.ModelProto:
    node = helper.make_node("Det", ["x"], ["y"], name="det")
    return _model([node], [helper.make_tensor_value_info("x", FLOAT, [2, 3, 3])], [_out()])


def _opset_21() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_image()], [_out()], opset=21)


def _conv(**options) -> onnx.ModelProto:
    nodes, inits = _qdq_conv(**options)
    return _model(nodes, [_image()], [_out()], inits)


BROKEN = {
    # rule: (graph, target, severities it must report)
    # 10.3's rules come from 10.1-GA's list (opset 9..20), another release's list: uncertain
    "opset-range": (_opset_21, "10.3", {"uncertain"}),
    "op-unsupported": (_det, "11.x", {"error"}),
    "input-type": (lambda: _relu_on(TensorProto.INT8), "11.x", {"error"}),
    "constant-input": (_cumsum_with_runtime_axis, "11.x", {"error"}),
    "squeeze-implicit-axes": (lambda: _squeeze_without_axes([1, 3, 1, 4]), "11.x", {"uncertain"}),
    "resize-mode": (
        lambda: _resize(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"),
        "11.x",
        {"error"},
    ),
    "qdq-type": (lambda: _qdq(np.array(0.1, np.float32), np.array(0, np.int16), opset=21), "11.x", {"error"}),
    "qdq-zero-point": (lambda: _qdq(np.array(0.1, np.float32), np.array(3, np.int8)), "11.x", {"error"}),
    "qdq-scale": (lambda: _qdq(np.array(-0.1, np.float32), np.array(0, np.int8)), "11.x", {"error"}),
    "qdq-per-channel": (lambda: _qdq(np.full(4, 0.1, np.float32), np.zeros(4, np.int8)), "11.x", {"error"}),
    "uint8-internal": (_uint8_inside, "11.x", {"error"}),
    "unknown-rank": (_no_input_shape, "11.x", {"error", "uncertain"}),
    "qdq-unfusable": (lambda: _conv(data_quantized=False), "11.x", {"slow"}),
    "qdq-grouped-conv": (lambda: _conv(group=4), "11.x", {"slow"}),
}


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_rule_fires_on_its_graph_only(rule: str) -> None:
    build, target, severities = BROKEN[rule]
    assert _rules_fired(build(), target) == {rule: severities}


def test_every_rule_has_a_graph() -> None:
    rules_in_code = {
        "opset-range", "op-unsupported", "input-type", "constant-input", "squeeze-implicit-axes",
        "resize-mode",
        "qdq-type", "qdq-zero-point", "qdq-scale", "qdq-per-channel", "uint8-internal", "unknown-rank",
        "qdq-unfusable", "qdq-grouped-conv",
    }  # fmt: skip
    source = Path(rules.__file__).read_text()
    assert {rule for rule in rules_in_code if f'"{rule}"' in source} == rules_in_code
    assert set(BROKEN) == rules_in_code


def test_release_differences_change_the_severity() -> None:
    # Squeeze without axes on dynamic dims: 10.x's importer (10.1-GA) refuses it outright.
    fired = _rules_fired(_squeeze_without_axes(["n", 3, 1, 4]), "10.3")
    assert fired["squeeze-implicit-axes"] == {"error"}
    assert "onnxOpImporters.cpp" in load_release("10.3")["importer"]["squeeze_omitted_axes_static_only"]
    # Static dims: the 10.x importer infers the axes; 11.x's sources do not say.
    assert _rules_fired(_squeeze_without_axes([1, 3, 1, 4]), "10.3") == {}
    # A computed Q/DQ scale: 10.3's header requires a build-time constant, 10.16/11.1's no longer say.
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["s"], name="amax", keepdims=0),
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq"),
    ]
    model = _model(nodes, [_image()], [_out()], [("z", np.array(0, np.int8))])
    assert _rules_fired(model, "10.3") == {"qdq-scale": {"error"}}
    assert _rules_fired(model, "11.x") == {"qdq-scale": {"uncertain"}}
    # CumSum axis computed from constants: "a build-time constant" (11.1) accepts it,
    # "must be an initializer" (10.1-GA's list, for 10.3) does not.
    nodes = [
        helper.make_node("Identity", ["axis"], ["axis_copy"], name="copy"),
        helper.make_node("CumSum", ["x", "axis_copy"], ["y"], name="cumsum"),
    ]
    model = _model(nodes, [_image()], [_out()], [("axis", np.array(1, np.int64))])
    assert _rules_fired(model, "11.x") == {}
    assert _rules_fired(model, "10.3") == {"constant-input": {"error"}}
    # FP4 is a quantized type from 10.16 on, not in 10.3.
    assert "FP4" not in load_release("10.3")["qdq"]["types"]
    assert "FP4" in load_release("10.16")["qdq"]["types"]


def test_cubic_resize_is_uncertain_not_an_error() -> None:
    for target in TARGETS:
        assert _rules_fired(_resize(mode="cubic"), target) == {"resize-mode": {"uncertain"}}


def test_rule_data_cites_file_line_and_release() -> None:
    for release, data in releases().items():
        assert data["opset"]["cite"].endswith(".md:5"), release
        for op, entry in data["ops"].items():
            assert "docs/operators.md:" in entry["cite"], (release, op)
        for key in ("types_cite", "zero_point_zero", "per_channel_weights_only", "int8_group_cite"):
            assert "include/NvInfer.h:" in data["qdq"][key] and f"release/{release}" in data["qdq"][key]


def test_targets_and_installed_versions() -> None:
    assert readiness.resolve_targets("all") == list(TARGETS)
    assert readiness.target_for_version("10.3.0.30") == "10.3"
    assert readiness.target_for_version("10.8.0") == "10.3"  # newest data at or below 10.8
    assert readiness.target_for_version("10.16.1.11") == "10.x"
    assert readiness.target_for_version("11.4.0.106") == "11.x"
    with pytest.raises(SegexportError, match="--target"):
        readiness.resolve_targets("9.x")
    with pytest.raises(SegexportError, match="no readiness rules"):
        readiness.target_for_version("8.6.1")


def test_artifacts_skip_the_cpu_scheme_and_refuse_unvouched_files(tmp_path: Path) -> None:
    onnx.save(clean_graph(), str(tmp_path / "model.onnx"))
    onnx.save(_uint8_inside(), str(tmp_path / "model.int8-cpu.onnx"))
    write_manifest(tmp_path)
    report = readiness.check_artifacts(tmp_path)
    assert report["errors"] == 0
    assert report["files"]["model.int8-cpu.onnx"] == {
        "skipped": readiness.SKIPPED_FILES["model.int8-cpu.onnx"]
    }
    assert report["files"]["model.onnx"]["counts"] == {"error": 0, "slow": 0, "uncertain": 0}
    onnx.save(_det(), str(tmp_path / "model.onnx"))  # changed after the manifest vouched for it
    # (a changed size is refused before the file is read; an equal size by its sha256)
    with pytest.raises(SegexportError, match="does not match the manifest's"):
        readiness.check_artifacts(tmp_path)


def _artifact(directory: Path, model: onnx.ModelProto) -> Path:
    directory.mkdir()
    onnx.save(model, str(directory / "model.onnx"))
    write_manifest(directory)
    return directory


def test_check_trt_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from segexport.cli import main

    clean = _artifact(tmp_path / "clean", clean_graph())
    result = CliRunner().invoke(main, ["check-trt", "--artifacts", str(clean), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and set(report["targets"]) == set(TARGETS)
    broken = _artifact(tmp_path / "broken", _det())
    result = CliRunner().invoke(main, ["check-trt", "--artifacts", str(broken), "--target", "10.3"])
    assert result.exit_code == 1
    assert "op-unsupported [det]: Det is marked unsupported" in result.output
    assert "docs/operators.md:" in result.output
    result = CliRunner().invoke(main, ["check-trt", "--artifacts", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "segexport: error:" in result.output


def test_trt_refuses_error_findings_for_the_installed_version(tmp_path: Path) -> None:
    from segexport.build import check_readiness
    from segexport.runtime.artifacts import read_manifest

    broken = _artifact(tmp_path / "broken", _det())
    said: list[str] = []
    with pytest.raises(SegexportError, match="--ignore-readiness"):
        check_readiness(broken, read_manifest(broken), "model.onnx", "10.3.0", False, said.append)
    check_readiness(broken, read_manifest(broken), "model.onnx", "11.4.0", True, said.append)
    assert "building anyway" in said[-1]
    slow = _artifact(tmp_path / "slow", _conv(group=4))
    said.clear()
    check_readiness(slow, read_manifest(slow), "model.onnx", "10.16.1", False, said.append)
    assert len(said) == 1 and said[0].startswith("readiness (slow): INT8 grouped Conv")
