"""The `onnx` stage: PyTorch -> ONNX with dynamic axes, onnxsim, parity against PyTorch."""

from segexport.export.stage import (
    MASK_OUTPUT,
    ExportRequest,
    add_mask_head,
    artifact_directory,
    export_onnx,
    plan_export,
    retrace,
)

__all__ = ["MASK_OUTPUT", "ExportRequest", "add_mask_head", "artifact_directory", "export_onnx", "plan_export", "retrace"]
