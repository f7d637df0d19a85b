"""PyTorch -> ONNX: the `torch.export`-based exporter with dynamic axes that really work.

The export uses explicit `Dim`s: height and width are declared as multiples of the model's
output stride, so the traced graph computes every intermediate size from the input instead
of baking it in. The trace uses at least 2 along every dynamic axis, because `torch.export`
specialises axes that are 1 in the example. Graph I/O axes are renamed from the exporter's
symbols to `batch`, `height`, `height/4`. `retrace` repeats an artifact's export exactly.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from typing import Any

import onnx
import torch
from torch import nn

from segexport.errors import SegexportError
from segexport.export.graph import simplify
from segexport.export.plan import ExportPlan, ExportRequest, plan_export
from segexport.shapes import InputShape


class _OutputsAsTuple(nn.Module):
    """Exposes any model's outputs (tensor, tuple, dict) as a flat tuple for the exporter."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from segexport.reference import flatten_outputs

        return flatten_outputs(self.model(*inputs))


def _trace_shape(plan: ExportPlan) -> InputShape:
    """The export shape with every dynamic axis at >= 2 (torch.export specialises 1s)."""
    shape, dynamic = plan.export_shape, plan.dynamic_range
    batch = shape.batch if shape.batch >= 2 else min(2, dynamic.max_batch)
    if shape.height is None or shape.width is None:
        return InputShape(batch)
    stride = plan.spec.stride
    assert dynamic.max_size is not None
    height = shape.height if shape.height >= 2 * stride else min(2 * stride, dynamic.max_size[0])
    width = shape.width if shape.width >= 2 * stride else min(2 * stride, dynamic.max_size[1])
    return InputShape(batch, height, width)


def _dynamic_shapes(plan: ExportPlan) -> dict[str, dict[int, Any]]:
    from torch.export import Dim

    dynamic = plan.dynamic_range
    spec = plan.spec
    batch = Dim(spec.batch_axis, min=dynamic.min_batch, max=dynamic.max_batch)
    if spec.input_kind == "roi":
        return {"roi_features": {0: batch}, "labels": {0: batch}}
    assert dynamic.min_size and dynamic.max_size
    stride = spec.stride
    # Height/width in units of the stride: the graph then knows they are multiples of it.
    rows = Dim("height_units", min=dynamic.min_size[0] // stride, max=dynamic.max_size[0] // stride)
    cols = Dim("width_units", min=dynamic.min_size[1] // stride, max=dynamic.max_size[1] // stride)
    return {"image": {0: batch, 2: stride * rows, 3: stride * cols}}


def trace_to_onnx(model: nn.Module, plan: ExportPlan, opset: int) -> onnx.ModelProto:
    """Trace with torch.export and convert; graph I/O axes get readable names."""
    spec = plan.spec
    example = spec.example_inputs(_trace_shape(plan), plan.num_classes, torch.Generator().manual_seed(0))
    captured = io.StringIO()
    exporter_log = logging.getLogger("torch.onnx")
    previous_level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(captured), warnings.catch_warnings(), torch.no_grad():
            # The exporter's deprecation chatter is not the user's business.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message="The axis name", category=UserWarning)
            program = torch.onnx.export(
                _OutputsAsTuple(model).eval(),
                tuple(example.values()),
                dynamo=True,
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                # forward(*inputs) takes one varargs tuple, so the per-input specs nest once.
                dynamic_shapes=(tuple(_dynamic_shapes(plan).values()),),
                opset_version=opset,
                external_data=False,
            )
    except Exception as error:  # torch.export raises many types; all mean "could not trace"
        raise SegexportError(f"{spec.name}: torch.onnx.export failed ({_export_reason(error)})") from error
    finally:
        exporter_log.setLevel(previous_level)
    assert program is not None
    proto = program.model_proto
    name_dynamic_axes(proto, _symbol_names(program.exported_program, plan), spec.stride)
    return proto


def _export_reason(error: Exception) -> str:
    """The exporter's one-line cause, from its 'Exception summary' section when present."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("<class"):
            return line
    return lines[0] if lines else type(error).__name__


def _symbol_names(program: Any, plan: ExportPlan) -> dict[str, str]:
    """Map torch.export's internal symbols (`s12`) to our axis names (`height_units`).

    The exporter names graph inputs after our Dims but leaves outputs with internal
    symbols (`8*s12`); reading the symbols off the traced inputs lets both be renamed.
    """
    axes = {0: plan.spec.batch_axis, 2: "height_units", 3: "width_units"}
    names: dict[str, str] = {}
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        for index, size in enumerate(node.meta["val"].shape):
            if isinstance(size, torch.SymInt) and index in axes:
                for symbol in size.node.expr.free_symbols:
                    names[str(symbol)] = axes[index]
    return names


_TERM = re.compile(r"^(?:(\d+)\*)?(height|width)_units$")


def name_dynamic_axes(proto: onnx.ModelProto, symbols: dict[str, str], stride: int) -> None:
    """Rename axes like `32*height_units` or `8*s12` to `height`, `height/4`, `batch`."""
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.dim_param:
                continue
            text = re.sub(r"\b[su]\d+\b", lambda m: symbols.get(m.group(0), m.group(0)), dim.dim_param)
            match = _TERM.match(text)
            if match:
                factor = int(match.group(1) or 1)
                axis = match.group(2)
                if factor == stride:
                    text = axis
                elif stride % factor == 0:
                    text = f"{axis}/{stride // factor}"
                else:
                    text = f"{axis}*{factor}/{stride}"
            dim.dim_param = text


def retrace(manifest: dict[str, Any], model: nn.Module) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Export `model` again exactly as the artifact was: (raw export, the graph as shipped).

    Same exporter, shapes, opset and simplification give the same node and tensor names,
    so intermediate tensors can be matched; the raw export keeps the exporter's metadata
    (PyTorch module paths) that onnxsim drops.
    """
    info = manifest["model"]
    batch, height, width = (int(v) for v in manifest["export_shape"].split("x"))
    axes = manifest["dynamic_axes"]
    plan = plan_export(
        ExportRequest(
            info["name"],
            num_classes=info["num_classes"],
            size=(height, width),
            batch=batch,
            min_size=(axes["height"][0], axes["width"][0]),
            max_size=(axes["height"][1], axes["width"][1]),
            max_batch=axes["batch"][1],
            opset=manifest["onnx"]["opset"],
            model_options=info.get("options", {}),
        )
    )
    raw = trace_to_onnx(model, plan, manifest["onnx"]["opset"])
    return raw, simplify(raw)[0] if manifest["onnx"]["simplified"] else raw
