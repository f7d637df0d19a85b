"""PyTorch -> ONNX, one room per concern; `from segexport.export import X` reaches them all.

`plan` (the request, its defaults, sizes and caps) -> `trace` (torch.export -> ONNX, dynamic
axes, `retrace`) and `graph` (ONNX edits: mask head, onnxsim, Squeeze axes) -> `stage` (the
`onnx` stage: build, trace, simplify, verify, manifest).
"""

import sys
import types
from typing import Any

from segexport.export.graph import (
    HEADS,
    MASK_OUTPUT,
    MASK_TYPES,
    add_mask_head,
    declared_shapes,
    explicit_squeeze_axes,
    simplify,
)
from segexport.export.plan import (
    DEFAULT_MODEL,
    DEFAULT_OPSET,
    MAX_BATCH,
    MAX_RUN_PIXELS,
    MAX_SIDE,
    SUPPORTED_OPSETS,
    ExportPlan,
    ExportRequest,
    check_head,
    plan_export,
)
from segexport.export.stage import MODEL_FILE, build_model, export_onnx, versions
from segexport.export.trace import name_dynamic_axes, retrace, trace_to_onnx
from segexport.export.user import export

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_OPSET",
    "HEADS",
    "MASK_OUTPUT",
    "MASK_TYPES",
    "MAX_BATCH",
    "MAX_RUN_PIXELS",
    "MAX_SIDE",
    "MODEL_FILE",
    "SUPPORTED_OPSETS",
    "ExportPlan",
    "ExportRequest",
    "add_mask_head",
    "build_model",
    "check_head",
    "declared_shapes",
    "explicit_squeeze_axes",
    "export",
    "export_onnx",
    "name_dynamic_axes",
    "plan_export",
    "retrace",
    "simplify",
    "trace_to_onnx",
    "versions",
]


class _CallablePackage(types.ModuleType):
    """`segexport.export(model, ...)` calls `export`: the package is also the Python API's door."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
