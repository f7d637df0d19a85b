"""The fallback's pieces on graphs small enough to check by hand."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from segexport import precision, sensitivity
from segexport.errors import SegexportError

QDQ = ("QuantizeLinear", "DequantizeLinear")


def _chain(activation: str = "Relu") -> onnx.ModelProto:
    """x -> conv1 -> relu (or Clip 0..6) -> conv2 -> conv3 (the classifier, float by rule) -> y."""
    rng = np.random.default_rng(0)
    weights = {f"w{i}": rng.normal(size=(4, 4, 3, 3)).astype(np.float32) for i in (1, 2, 3)}
    bounds = ["low", "high"] if activation == "Clip" else []
    if bounds:
        weights.update(low=np.array(0.0, np.float32), high=np.array(6.0, np.float32))
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(activation, ["a", *bounds], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["b"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["b", "w3"], ["y"], name="conv3", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, n) for n, w in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _quantized(model: onnx.ModelProto, scheme: precision.Int8Scheme) -> onnx.ModelProto:
    ranges = {name: (-6.0, 6.0) for name in ("x", "a", "r", "b", "y")}
    return precision.to_int8(model, precision.Calibration("minmax", ranges, "sha", 1), scheme=scheme)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


@pytest.mark.parametrize("activation", ["Relu", "Clip"])
@pytest.mark.parametrize("scheme_name", ["int8", "int8-cpu"])
def test_every_node_float_gives_the_fp32_graph_back(scheme_name: str, activation: str) -> None:
    """Also where the CPU scheme folded the activation into conv1's Q (it is put back)."""
    fp32 = _chain(activation)
    int8 = _quantized(fp32, precision.INT8_SCHEMES[scheme_name])
    assert any(n.op_type in QDQ for n in int8.graph.node)
    names = [n.name for n in int8.graph.node if n.op_type not in QDQ]
    restored = precision.with_float_nodes(int8, fp32, names)
    onnx.checker.check_model(restored, full_check=True)
    assert not any(n.op_type in QDQ for n in restored.graph.node)
    x = np.random.default_rng(1).normal(size=(1, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(restored, x), _run(fp32, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["Relu", "Clip"])
def test_the_cpu_scheme_folds_activations_into_the_producers_q(activation: str) -> None:
    """No requantisation between a Conv and its Relu/Clip: conv1 writes the activation's tensor,
    whose Q (range 0..6) clamps as the activation did; the TensorRT scheme leaves it in place."""
    fp32 = _chain(activation)
    cpu = _quantized(fp32, precision.INT8_SCHEMES["int8-cpu"])
    assert activation not in {n.op_type for n in cpu.graph.node}
    conv1 = next(n for n in cpu.graph.node if n.name == "conv1")
    assert conv1.output[0] == "r"
    trt = _quantized(fp32, precision.INT8_SCHEMES["int8"])
    assert activation in {n.op_type for n in trt.graph.node}


def test_a_kept_float_layer_reads_what_its_scheme_gives_it() -> None:
    """TensorRT's placement: float weights and the float activation. The CPU scheme: float
    weights, but the activation its quantized neighbours already rounded."""
    fp32 = _chain()
    for scheme_name, activation_source in (("int8", "Relu"), ("int8-cpu", "DequantizeLinear")):
        int8 = _quantized(fp32, precision.INT8_SCHEMES[scheme_name])
        kept = sensitivity.Candidates(fp32, int8, precision.INT8_SCHEMES[scheme_name].inputs_only)
        graph = kept.keeping_float(["conv2"])
        producer = {out: node.op_type for node in graph.graph.node for out in node.output}
        conv2 = next(n for n in graph.graph.node if n.name == "conv2")
        assert conv2.input[1] == "w2"  # the FP32 weight itself
        assert producer[conv2.input[0]] == activation_source, scheme_name
        conv1 = next(n for n in graph.graph.node if n.name == "conv1")
        assert producer[conv1.input[1]] == "DequantizeLinear"  # the others stay quantized


def test_layer_costs_count_multiply_accumulates(tmp_path: Path) -> None:
    fp32 = _chain()
    feed = {"x": np.zeros((1, 4, 8, 8), np.float32)}
    costs = sensitivity.layer_costs(fp32, ["conv1", "conv2"], feed, tmp_path)
    per_conv = 4 * 8 * 8 * (4 * 3 * 3) + 2 * (4 * 8 * 8)  # MACs + elements read and written
    assert costs == {"conv1": per_conv, "conv2": per_conv}


class _Sets(sensitivity.Candidates):
    """Candidates whose 'graphs' only name the float set, for a score defined on sets."""

    def keeping_float(self, layers: Sequence[str]) -> onnx.ModelProto:
        return onnx.ModelProto(doc_string=",".join(sorted(layers)))


def _entry(node: str, cost: int, gain: float) -> sensitivity.LayerSensitivity:
    return sensitivity.LayerSensitivity(node, "Conv", cost, 0.0, gain)


def test_fallback_takes_benefit_per_cost_then_drops_what_is_not_needed() -> None:
    """`cheap` helps most per cost, then `big`; with both the target is met, and `cheap`
    turns out to be unnecessary once `big` is in: the cheapest set that meets it is [big]."""
    agreement = {"": 0.95, "cheap": 0.97, "big": 0.99, "big,cheap": 0.995, "useless": 0.95}
    entries = [_entry("cheap", 10, 0.02), _entry("big", 100, 0.04), _entry("useless", 1, 0.0)]

    def score(model: onnx.ModelProto) -> float:
        return agreement.get(model.doc_string, 0.0)

    seen: list[str] = []
    candidates = _Sets(onnx.ModelProto(), onnx.ModelProto(), True)
    chosen, reached = sensitivity.choose_float_layers(entries, candidates, score, 0.99, seen.append)
    assert chosen == ["big"] and reached == 0.99
    assert [e.node for e in sensitivity.ranked(entries)] == ["cheap", "big"]  # no benefit: never tried
    unreachable, best = sensitivity.choose_float_layers(entries, candidates, score, 0.999, seen.append)
    assert unreachable == ["cheap", "big"] and best == 0.995


def test_sensitivity_cache_round_trip_and_refusal(tmp_path: Path) -> None:
    cache = tmp_path / "calib.sensitivity.json"
    entries = [_entry("conv1", 10, 0.01)]
    cache.write_text(json.dumps(sensitivity.cache_document(cache, "key", entries)))
    assert sensitivity.load_cached(cache, "key") == entries
    assert sensitivity.load_cached(cache, "other graph") is None
    cache.write_text("{not json")
    with pytest.raises(SegexportError, match="not a segexport sensitivity cache"):
        sensitivity.load_cached(cache, "key")
