"""The size rule of a user's module, checked on the exported ONNX, not only in PyTorch.

`probe_module` learns the stride by running the PyTorch module at sizes that are odd
multiples of each candidate; a module that runs at any size in PyTorch can still export
to a graph that only holds at multiples of its real stride (smp's U-Net: ONNX Runtime's
GatherND fails off a multiple of 32 on some exports). So, once the graph exists, it is run
at an odd multiple of the probed stride beside PyTorch; where it fails or differs, the
stride is doubled until it holds, the plan is redone with that rule, and the manifest says
what was raised and why. The shape that held joins the export's verification shapes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from segexport.errors import SegexportError
from segexport.export.plan import ExportPlan, ExportRequest, plan_export
from segexport.reference import TorchRunner, verify_runners
from segexport.runtime import OnnxRuntimeRunner
from segexport.shapes import DynamicRange, InputShape
from segexport.sources.adapter import STRIDES


def off_stride_shape(stride: int, size: tuple[int, int], dynamic: DynamicRange) -> InputShape | None:
    """Batch 1 at odd multiples of `stride` near `size` inside the range (None: none fits).

    An odd multiple of s is not a multiple of 2s, so a graph that needs more than s fails there.
    """
    assert dynamic.min_size is not None and dynamic.max_size is not None
    sides = []
    for side, low, high in zip(size, dynamic.min_size, dynamic.max_size, strict=True):
        units = 2 * max(1, round(side / stride / 2)) + 1
        fitting = [u * stride for u in (units, units - 2, units + 2) if u > 0 and low <= u * stride <= high]
        if not fitting:
            return None
        sides.append(fitting[0])
    return InputShape(1, sides[0], sides[1])


def _holds(
    plan: ExportPlan, model: Any, onnx_path: Path, shape: InputShape, request: ExportRequest
) -> str | None:
    """None where the ONNX runs at `shape` and matches PyTorch; else the first failure line."""
    report = verify_runners(
        plan.spec,
        plan.num_classes,
        TorchRunner(model, plan.spec.output_names, request.threads),
        OnnxRuntimeRunner(onnx_path, threads=request.threads),
        [shape],
        request.tolerance,
    )
    return None if report.passed else report.failures()[0]


def settle_stride(
    request: ExportRequest, plan: ExportPlan, model: Any, onnx_path: Path, say: Any
) -> ExportPlan:
    """The plan with the smallest stride (>= the probed one) at which the ONNX holds off-stride.

    Only for a user's module whose stride the probe found; a stride the user gave is only
    checked (its off-stride shape joins the verification shapes and fails there if wrong).
    """
    source = plan.source or {}
    probe = source.get("probe")
    if source.get("kind") != "python" or probe is None or plan.export_shape.height is None:
        return plan
    assert plan.export_shape.width is not None
    size = (plan.export_shape.height, plan.export_shape.width)
    probed = plan.spec.stride
    given = probe.get("stride_from") == "given"
    candidates = [probed] if given else [s for s in STRIDES if s >= probed]
    rejected: list[dict[str, Any]] = []
    for stride in candidates:
        if size[0] % stride or size[1] % stride:
            break
        shape = off_stride_shape(stride, size, plan.dynamic_range)
        if shape is None:  # the range holds no odd multiple: nothing further to learn from it
            return _with_shape(plan, None, rejected, stride, request)
        failure = None if given else _holds(plan, model, onnx_path, shape, request)
        if failure is None:
            return _with_shape(plan, shape, rejected, stride, request)
        say(f"      the ONNX does not hold at stride {stride} ({failure}); trying a larger stride")
        rejected.append({"stride": stride, "shape": str(shape), "failure": failure})
    reasons = "; ".join(f"stride {r['stride']}: {r['failure']}" for r in rejected[-1:])
    raise SegexportError(
        f"the exported ONNX does not hold at sizes off a multiple of any stride that divides "
        f"{size[0]}x{size[1]} ({reasons}); export at a larger size (the trace fixes any inner axis "
        "that is 1 at the export size) or a multiple of a larger stride, or pass stride= (--stride)"
    )


def _with_shape(
    plan: ExportPlan,
    shape: InputShape | None,
    rejected: list[dict[str, Any]],
    stride: int,
    request: ExportRequest,
) -> ExportPlan:
    """Record the check and, where the stride rose, redo the plan with the new size rule."""
    assert plan.source is not None
    probe = {**plan.source["probe"], "stride": stride}
    probe["onnx_stride_check"] = {"shape": str(shape) if shape else None, "rejected": rejected}
    source = {**plan.source, "probe": probe}
    if stride != plan.spec.stride:
        spec = dataclasses.replace(plan.spec, stride=stride)
        plan = plan_export(dataclasses.replace(request, spec=spec, source=source))
    shapes = plan.verify_shapes if shape is None else tuple(dict.fromkeys([*plan.verify_shapes, shape]))
    return dataclasses.replace(plan, source=source, verify_shapes=shapes)
