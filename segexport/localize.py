"""Where an artifact starts to differ: intermediate tensors compared node by node.

ONNX Runtime returns any tensor that is declared a graph output, so the candidate and a
reference graph with the same tensor names (the artifact's FP32 `model.onnx` for FP16 and
INT8, which keep every producer's output name; a fresh export of the PyTorch model for a
failing FP32 artifact, since the same exporter gives the same names) are run on the same
inputs and compared tensor by tensor in topological order. The first node whose error
jumps above both the tolerance and `JUMP` times the error it received is named.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from segexport.compare import OutputComparison, OutputStats, Tolerance
from segexport.runtime import OnnxRuntimeRunner

# A node is where the error starts when its output's relative L2 exceeds this many times
# the largest relative L2 of the activations it reads (and the tolerance).
JUMP = 10.0
SHOWN = 5


def expose(model: onnx.ModelProto, tensors: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` that also returns `tensors` (ONNX Runtime infers their types)."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in probe.graph.output}
    for tensor in dict.fromkeys(tensors):
        if tensor not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=tensor))
    return probe


def run_exposed(
    model: onnx.ModelProto,
    tensors: Iterable[str],
    feeds: Sequence[dict[str, np.ndarray]],
    path: Path,
    threads: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """The values of `tensors` (and the graph outputs) for every feed; `path` holds the probe."""
    onnx.save(expose(model, tensors), str(path))
    runner = OnnxRuntimeRunner(path, threads=threads)
    return [runner.infer(feed) for feed in feeds]


@dataclass
class NodeError:
    """One node's output error against the reference, and the error it was fed."""

    node: str
    op_type: str
    tensor: str
    rel_l2: float
    max_abs: float
    input_rel_l2: float
    nan: int
    inf: int
    module: str | None = None
    weights: list[dict[str, Any]] = field(default_factory=list)  # initializers that differ


@dataclass
class Localization:
    reference: str
    images: int
    tensors_compared: int
    first_divergence: NodeError | None
    largest_added: list[NodeError]
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def module_scopes(raw: onnx.ModelProto) -> dict[str, str]:
    """Node name -> PyTorch module path, from the metadata the torch.export exporter leaves.

    onnxsim drops node metadata but keeps node names, so the raw export of the same model
    names the modules of the simplified graph's nodes.
    """
    scopes = {}
    for node in raw.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        try:
            names = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
            classes = ast.literal_eval(props.get("pkg.torch.onnx.class_hierarchy", "[]"))
        except (ValueError, SyntaxError):
            continue
        # [..., 'model.stages.0.patch_embed.proj', 'conv2d']: the last entry is the op itself;
        # 'model.' is the export wrapper's attribute.
        if len(names) >= 2 and names[-2].startswith("model."):
            path = names[-2].removeprefix("model.")
            kind = classes[-2].rsplit(".", 1)[-1] if len(classes) == len(names) else None
            scopes[node.name] = f"{path} ({kind})" if kind else path
    return scopes


def _weight_module(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> str | None:
    """A module path read off the node's parameter names (`model.encoder.1.conv.weight`)."""
    for name in node.input:
        if name in initializers and name.startswith("model.") and "." in name[len("model.") :]:
            return name.removeprefix("model.").rsplit(".", 1)[0]
    return None


def localize(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    feeds: Sequence[dict[str, np.ndarray]],
    tolerance: Tolerance,
    workdir: Path,
    reference_label: str,
    scopes: dict[str, str] | None = None,
    threads: int | None = None,
) -> Localization:
    """Compare every tensor both graphs produce; name the first node whose error jumps."""
    produced = {o for n in candidate.graph.node for o in n.output}
    common = [o for n in reference.graph.node for o in n.output if o in produced]
    expected = run_exposed(reference, common, feeds, workdir / "probe_reference.onnx", threads)
    actual = run_exposed(candidate, common, feeds, workdir / "probe_candidate.onnx", threads)
    errors = {}
    for tensor in common:
        stats = OutputStats(tensor, labels=False)
        for want, got in zip(expected, actual, strict=True):
            if want[tensor].dtype.kind == "f" and got[tensor].dtype.kind == "f":
                stats.add(want[tensor], got[tensor])
        if stats.shape is not None:
            errors[tensor] = stats.result(tolerance)
    if not errors:
        reason = "the candidate and the reference share no floating-point tensor names"
        return Localization(reference_label, len(feeds), 0, None, [], reason)
    reference_init = {i.name: i for i in reference.graph.initializer}
    candidate_init = {i.name: i for i in candidate.graph.initializer}
    carried: dict[str, float] = {}  # tensor -> error of the nearest compared tensor upstream
    first: NodeError | None = None
    added: list[tuple[float, NodeError]] = []
    for node in reference.graph.node:  # ONNX graphs are topologically sorted
        fed = max((carried.get(name, 0.0) for name in node.input), default=0.0)
        compared = [o for o in node.output if o in errors]
        for name in node.output:
            carried[name] = _error(errors[name]) if name in errors else fed
        if not compared:
            continue
        tensor = max(compared, key=lambda name: _error(errors[name]))
        figures = errors[tensor]
        error = _error(figures)
        found = NodeError(
            node.name,
            node.op_type,
            tensor,
            figures.rel_l2,
            figures.max_abs,
            fed,
            figures.nan,
            figures.nonfinite - figures.nan,
            (scopes or {}).get(node.name) or _weight_module(node, reference_init),
        )
        if first is None and error > tolerance.max_rel_l2 and error > JUMP * fed:
            found.weights = _changed_weights(node, reference_init, candidate_init, tolerance)
            first = found
        if math.isfinite(error):
            added.append((error - fed, found))
    largest = [item for _, item in sorted(added, key=lambda pair: -pair[0])[:SHOWN]]
    note = None if first else "no single node: the error grows gradually (largest contributions listed)"
    return Localization(reference_label, len(feeds), len(errors), first, largest, note)


def _error(figures: OutputComparison) -> float:
    """A tensor's relative L2, infinite when the candidate has NaN/Inf the reference has not."""
    if figures.nonfinite > figures.reference_nonfinite:
        return math.inf
    return float(figures.rel_l2) if math.isfinite(figures.rel_l2) else math.inf


def _changed_weights(
    node: onnx.NodeProto,
    reference: dict[str, onnx.TensorProto],
    candidate: dict[str, onnx.TensorProto],
    tolerance: Tolerance,
) -> list[dict[str, Any]]:
    """The node's initializers whose values differ between the graphs (same name)."""
    changed = []
    for name in node.input:
        if name not in reference or name not in candidate:
            continue
        stats = OutputStats(name, labels=False)
        stats.add(onnx.numpy_helper.to_array(reference[name]), onnx.numpy_helper.to_array(candidate[name]))
        figures = stats.result(tolerance)
        if _error(figures) > tolerance.max_rel_l2:
            changed.append(
                {"name": name, "rel_l2": figures.rel_l2, "max_abs": figures.max_abs, "nan": figures.nan}
            )
    return changed
