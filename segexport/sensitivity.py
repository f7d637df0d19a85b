"""Which layers an INT8 graph keeps float when it misses its agreement target, and what they cost.

Each quantized layer is measured by what users care about, argmax agreement with PyTorch
FP32 on the evaluation images, twice: the agreement lost when it is the only quantized
layer, and the agreement regained when it is the only float one. Ranking by an error
proxy (how much a layer's output error grows) was tried first and kept the wrong layers on
MobileNetV2: keeping its top 1-8 float gained nothing.

A float layer costs speed, roughly its multiply-accumulates (plus the Q/DQ conversions
around it, about one operation per element in and out). That estimate, not a timing, ranks
candidates by benefit per cost: timings would make the chosen graph differ run to run,
and the same command must give the same graph. The candidates are tried through graph
surgery (`precision.with_float_nodes`, milliseconds) instead of re-quantizing (seconds).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from segexport import precision
from segexport.errors import SegexportError
from segexport.localize import run_exposed
from segexport.runtime.jsonfile import Fields, read_json

Score = Callable[[onnx.ModelProto], float]  # agreement of a graph on the evaluation images
Progress = Callable[[str], None]
CACHE_VERSION = 1
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Candidates:
    """How fallback graphs are made from one quantized graph."""

    fp32: onnx.ModelProto
    quantized: onnx.ModelProto
    inputs_only: bool  # the scheme's: kept-float layers read float activations

    def keeping_float(self, layers: Sequence[str]) -> onnx.ModelProto:
        return precision.with_float_nodes(
            self.quantized, self.fp32, layers, float_activations=self.inputs_only
        )

    def quantizing_only(self, layer: str) -> onnx.ModelProto:
        others = [n.name for n in self.quantized.graph.node if n.name != layer and n.op_type not in _QDQ]
        return precision.with_float_nodes(self.quantized, self.fp32, others)


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op_type: str
    cost: int  # multiply-accumulates + elements converted in and out, at the evaluation size
    loss_alone: float  # agreement lost when this is the only quantized layer
    gain_float: float  # agreement regained when this is the only float layer

    @property
    def benefit(self) -> float:
        return max(self.loss_alone, self.gain_float, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "benefit": self.benefit}


def layer_costs(
    fp32: onnx.ModelProto, layers: Sequence[str], feed: dict[str, np.ndarray], workdir: Path
) -> dict[str, int]:
    """Multiply-accumulates of each layer plus the elements it reads and writes, from the
    shapes one inference at the evaluation size gives."""
    nodes = {n.name: n for n in fp32.graph.node if n.name in set(layers)}
    weights = {init.name: tuple(init.dims) for init in fp32.graph.initializer}
    tensors = sorted({t for n in nodes.values() for t in (n.input[0], n.output[0])})
    shapes = {
        name: value.shape
        for name, value in run_exposed(fp32, tensors, [feed], workdir / "shapes.onnx")[0].items()
    }
    costs = {}
    for name, node in nodes.items():
        weight = weights.get(node.input[1], ()) if len(node.input) > 1 else ()
        reads, writes = math.prod(shapes[node.input[0]]), math.prod(shapes[node.output[0]])
        if node.op_type == "Conv" and weight:
            macs = writes * math.prod(weight[1:])  # each output: C_in/group x kernel
        elif node.op_type == "ConvTranspose" and weight:
            macs = reads * math.prod(weight[1:])  # each input: C_out/group x kernel
        else:  # MatMul/Gemm: each output reads a row of K
            macs = writes * shapes[node.input[0]][-1]
        costs[name] = int(macs + reads + writes)
    return costs


def analyse(
    candidates: Candidates,
    layers: Sequence[str],
    costs: dict[str, int],
    score: Score,
    baseline: float,
    progress: Progress,
) -> list[LayerSensitivity]:
    """Both measures for every layer (2 graphs each), in the order given."""
    op_types = {n.name: n.op_type for n in candidates.fp32.graph.node}
    results = []
    for index, layer in enumerate(layers, 1):
        alone = score(candidates.quantizing_only(layer))
        only_float = score(candidates.keeping_float([layer]))
        results.append(
            LayerSensitivity(layer, op_types[layer], costs[layer], 1.0 - alone, only_float - baseline)
        )
        if index % 10 == 0 or index == len(layers):
            progress(f"  sensitivity: {index}/{len(layers)} layers measured")
    return results


def ranked(sensitivities: Sequence[LayerSensitivity]) -> list[LayerSensitivity]:
    """Layers worth keeping float, most benefit per cost first (ties by name: deterministic)."""
    return sorted((s for s in sensitivities if s.benefit > 0), key=lambda s: (-s.benefit / s.cost, s.node))


def choose_float_layers(
    sensitivities: Sequence[LayerSensitivity],
    candidates: Candidates,
    score: Score,
    target: float,
    progress: Progress,
) -> tuple[list[str], float]:
    """The cheapest set found that meets `target`: layers added in order of benefit per cost
    until it is met, then each dropped again (most expensive first) if the target holds
    without it. Returns the set (in the order added) and its agreement."""
    chosen: list[str] = []
    agreement = -1.0
    for entry in ranked(sensitivities):
        chosen.append(entry.node)
        agreement = score(candidates.keeping_float(chosen))
        progress(f"  {len(chosen)} layers kept float (+{entry.node}): agreement {agreement:.4f}")
        if agreement >= target:
            break
    if agreement < target:
        return chosen, agreement
    cost = {s.node: s.cost for s in sensitivities}
    for layer in sorted(chosen, key=lambda name: (-cost[name], name)):
        trial = [name for name in chosen if name != layer]
        trial_agreement = score(candidates.keeping_float(trial))
        if trial_agreement >= target:
            chosen, agreement = trial, trial_agreement
            progress(f"  {layer} is not needed: {len(chosen)} layers, agreement {agreement:.4f}")
    return chosen, agreement


def cache_key(quantized: onnx.ModelProto, reference: Sequence[np.ndarray]) -> str:
    """Results hold for one quantized graph measured against one set of reference outputs."""
    digest = hashlib.sha256(quantized.SerializeToString(deterministic=True))
    for array in reference:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def load_cached(path: Path | None, key: str) -> list[LayerSensitivity] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = read_json(path, "sensitivity cache")
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return None
        entries = data.get("results", {}).get(key)
        if entries is None:
            return None
        check = Fields(path)
        return [
            LayerSensitivity(
                check.string(e["node"], f"results.{key}[{i}].node"),
                check.string(e["op_type"], f"results.{key}[{i}].op_type"),
                check.integer(e["cost"], f"results.{key}[{i}].cost"),
                check.number(e["loss_alone"], f"results.{key}[{i}].loss_alone"),
                check.number(e["gain_float"], f"results.{key}[{i}].gain_float"),
            )
            for i, e in enumerate(check.listing(entries, f"results.{key}"))
        ]
    except SegexportError as error:  # one line already naming the file and field
        raise SegexportError(f"{error}: not a segexport sensitivity cache; delete it to re-measure") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise SegexportError(f"{path}: not a segexport sensitivity cache ({error})") from error


def cache_document(path: Path | None, key: str, results: Sequence[LayerSensitivity]) -> dict[str, Any]:
    """The cache file's new content: what it held for other graphs, plus these results."""
    data: dict[str, Any] = {"version": CACHE_VERSION, "results": {}}
    if path is not None and path.is_file():  # load_cached has read it: valid JSON
        old = read_json(path, "sensitivity cache")
        if isinstance(old, dict) and old.get("version") == CACHE_VERSION:
            data["results"].update(old.get("results", {}))
    data["results"][key] = [{k: v for k, v in r.to_dict().items() if k != "benefit"} for r in results]
    return data
