"""The `onnx` stage: build the model, trace, simplify, verify against PyTorch, write the manifest.

Nothing is trusted on faith: the artifact is run at the export shape and at others
(batch > 1, another aspect ratio) and compared with PyTorch; a failure leaves nothing behind.
Planning is `segexport.export.plan`, tracing `.trace`, graph edits `.graph`.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from segexport import __version__, readiness
from segexport.compare import VerificationReport
from segexport.errors import VerificationError
from segexport.export.graph import MASK_OUTPUT, add_mask_head, declared_shapes, simplify, take_raw_frames
from segexport.export.plan import ExportPlan, ExportRequest, plan_export
from segexport.export.recording import record_reference, with_head
from segexport.export.stride import settle_stride
from segexport.export.trace import trace_to_onnx
from segexport.importers import Preprocessing, build_imported
from segexport.reference import FramesRunner, TorchRunner, frames_reference, verify_runners
from segexport.runtime import OnnxRuntimeRunner
from segexport.runtime.artifacts import (
    MANIFEST,
    SCHEMA_VERSION,
    describe_files,
    sha256_file,
    staged_directory,
    write_json_atomic,
)
from segexport.runtime.files import REFERENCE_FILE
from segexport.runtime.preprocessing import INPUT_FORMATS, graph_normalises
from segexport.runtime.recorded import write_reference
from segexport.weights import load_weights
from segexport.zoo.registry import ModelSpec, create_model

Progress = Callable[[str], None]

MODEL_FILE = "model.onnx"


def versions() -> dict[str, str]:
    import onnxruntime
    import onnxsim

    return {
        "segexport": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxsim": getattr(onnxsim, "__version__", "unknown"),
        "numpy": np.__version__,
    }


def build_model(plan: ExportPlan) -> nn.Module:
    if plan.module is not None:
        return plan.module.eval()
    if plan.imported is not None:
        return build_imported(plan.imported, plan.options, plan.num_classes)
    model = create_model(plan.spec.name, num_classes=plan.num_classes, **plan.options)
    if plan.weights is not None:
        load_weights(model, plan.weights.path)
    return model.eval()


def export_onnx(request: ExportRequest, progress: Progress | None = None) -> dict[str, Any]:
    """Export, simplify and verify one model; returns the manifest written beside it.

    Raises VerificationError (and leaves nothing behind) when any shape exceeds the
    tolerance.
    """
    say = progress or (lambda _message: None)
    plan = plan_export(request)
    spec = plan.spec
    started = time.perf_counter()
    with staged_directory(plan.out_dir, request.force, artifacts_only=True) as staging:
        say(f"[1/4] building {spec.name} ({plan.num_classes} classes)")
        model = build_model(plan)
        source_check = None
        if plan.imported is not None:
            from segexport.importers.check import check_import, describe_check

            say(f"      checking the {plan.imported.format} import")
            assert plan.export_shape.height and plan.export_shape.width
            size = (plan.export_shape.height, plan.export_shape.width)
            source_check = check_import(plan.imported, model, size, request.tolerance)
            say(f"      {describe_check(source_check)}")
        say(f"[2/4] exporting to ONNX (opset {request.opset}, {plan.dynamic_range.describe()})")
        traced_at = time.perf_counter()
        raw = trace_to_onnx(model, plan, request.opset)
        export_seconds = time.perf_counter() - traced_at
        say("[3/4] simplifying with onnxsim")
        simplified_at = time.perf_counter()
        proto, simplify_note = simplify(raw)
        simplify_seconds = time.perf_counter() - simplified_at
        logits = spec.logits_outputs[0] if spec.logits_outputs else ""
        proto = add_mask_head(proto, logits, request.head, request.mask_dtype)
        model_path = staging / MODEL_FILE
        onnx.save(proto, str(model_path))
        plan = settle_stride(request, plan, model, model_path, say)
        spec = plan.spec
        say(f"[4/4] verifying against PyTorch at {len(plan.verify_shapes)} shapes")
        verified_at = time.perf_counter()
        head = _head_record(request, spec)
        reference = with_head(TorchRunner(model, spec.output_names, request.threads), head)
        report = verify_runners(
            spec,
            plan.num_classes,
            reference,
            OnnxRuntimeRunner(model_path, threads=request.threads),
            plan.verify_shapes,
            request.tolerance,
            progress=lambda message: say(f"      {message}"),
        )
        frames_report = None
        if report.passed and graph_normalises(request.input_format):
            say(
                f"      taking raw frames (uint8 NHWC, normalised in the graph), "
                f"checked at {len(plan.verify_shapes)} shapes"
            )
            proto, frames_report = take_raw_frames_checked(plan, request, proto, model_path)
        verify_seconds = time.perf_counter() - verified_at
        manifest = _manifest(
            plan,
            request,
            proto,
            raw,
            simplify_note,
            report,
            {
                "export": round(export_seconds, 2),
                "simplify": round(simplify_seconds, 2),
                "verify": round(verify_seconds, 2),
                "total": round(time.perf_counter() - started, 2),
            },
            source_check,
        )
        if frames_report is not None:  # the raw-frame graph against the float graph it wraps
            manifest["verification"]["frames"] = frames_report.to_dict()
        if not report.passed:
            raise VerificationError(
                f"{spec.name}: ONNX output differs from PyTorch; no artifact written. "
                + " | ".join(report.failures()[:3])
            )
        written = [MODEL_FILE]
        if spec.input_kind == "image":
            say(f"      recording PyTorch's outputs into {REFERENCE_FILE}")
            recorded = record_reference(
                frames_reference(reference, manifest), manifest, plan.verify_shapes, say
            )
            written_bytes = write_reference(staging, recorded)
            say(f"      {REFERENCE_FILE}: {len(recorded.sets)} set(s), {written_bytes / 1024:.0f} KiB")
            written.append(REFERENCE_FILE)
        manifest["files"] = describe_files(staging, written)
        manifest["trt_readiness"] = readiness.check_artifacts(staging, "all", manifest)
        for line in readiness.summary_lines(manifest["trt_readiness"]):
            say(line)
        write_json_atomic(staging / MANIFEST, manifest)
    return manifest


def _head_record(request: ExportRequest, spec: ModelSpec) -> dict[str, Any]:
    """What a runtime needs to use the head: which output holds ids, and how masks resize."""
    # `scores`: the output holding one score per class (what Segmenter reads; SCHEMA in runtime/schema.py)
    scores = spec.logits_outputs[0] if spec.logits_outputs and request.head != "mask" else None
    if request.head == "logits":
        return {"kind": "logits", "mask": None, "scores": scores}
    return {
        "kind": request.head,
        "scores": scores,
        "mask": {
            "output": MASK_OUTPUT,
            "dtype": request.mask_dtype,
            "argmax_of": spec.logits_outputs[0],
            "axis": 1,
            # Ids cannot be interpolated: a runtime resizing to the input's size uses nearest.
            "resize": "nearest",
        },
    }


def _manifest(
    plan: ExportPlan,
    request: ExportRequest,
    proto: onnx.ModelProto,
    raw: onnx.ModelProto,
    simplify_note: str | None,
    report: VerificationReport,
    seconds: dict[str, float],
    source_check: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec = plan.spec
    dynamic = plan.dynamic_range
    axes: dict[str, list[int]] = {spec.batch_axis: [dynamic.min_batch, dynamic.max_batch]}
    if dynamic.min_size and dynamic.max_size:
        axes["height"] = [dynamic.min_size[0], dynamic.max_size[0]]
        axes["width"] = [dynamic.min_size[1], dynamic.max_size[1]]
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "name": spec.name,
            "family": spec.family,
            "description": spec.description,
            "options": plan.options,
            "num_classes": plan.num_classes,
            "class_names": list(plan.class_names),
            "weights": _weights_record(plan),
            "trained": plan.weights.record if plan.weights and plan.weights.record else None,
        },
        "inputs": declared_shapes(proto.graph.input),
        "outputs": declared_shapes(proto.graph.output),
        "dynamic_axes": axes,
        "export_shape": str(plan.export_shape),
        "onnx": {
            "opset": request.opset,
            "exporter": "torch.onnx.export(dynamo=True)",
            "simplified": simplify_note is None,
            "simplify_note": simplify_note,
            "nodes_before_simplify": len(raw.graph.node),
            "nodes": len(proto.graph.node),
        },
        "versions": versions(),
        "seconds": seconds,
        "verification": {"fp32": report.to_dict()},
        "head": _head_record(request, spec),
    }
    if plan.imported is not None:
        manifest["source"] = {**plan.imported.record(), "check": source_check}
    elif plan.source is not None:
        manifest["source"] = plan.source
    if spec.input_kind == "image":
        manifest["size_rule"] = {"divisible_by": spec.stride}
        manifest["preprocessing"] = _preprocessing_record(plan, request.input_format)
    return manifest


def _preprocessing_record(plan: ExportPlan, input_format: str) -> dict[str, Any]:
    """The manifest's `preprocessing`: how pixels become the network's input, and what the
    graph takes (INPUT_FORMATS: normalised float NCHW, or raw frames normalised inside)."""
    prep = plan.preprocessing or Preprocessing(plan.spec.mean, plan.spec.std)
    return {
        "color_order": "RGB",
        "layout": INPUT_FORMATS[input_format]["layout"],
        "input_format": input_format,
        "scale": prep.scale,
        "mean": list(prep.mean),
        "std": list(prep.std),
        "formula": "(pixel * scale - mean) / std"
        + (", inside the graph" if graph_normalises(input_format) else ""),
    }


def take_raw_frames_checked(
    plan: ExportPlan, request: ExportRequest, proto: onnx.ModelProto, model_path: Path
) -> tuple[onnx.ModelProto, VerificationReport]:
    """Prefix the verified float graph with the normalisation and write it over the staged file,
    after checking it on random frames against the float graph fed `normalise_for(frames)`."""
    record = _preprocessing_record(plan, request.input_format)
    framed = take_raw_frames(proto, record["mean"], record["std"], float(record["scale"]))
    float_graph = FramesRunner(OnnxRuntimeRunner(model_path, threads=request.threads), record)
    framed_bytes = framed.SerializeToString()
    report = verify_runners(
        dataclasses.replace(plan.spec, input_format=request.input_format),
        plan.num_classes,
        float_graph,
        OnnxRuntimeRunner(framed_bytes, threads=request.threads),
        plan.verify_shapes,
        request.tolerance,
    )
    if not report.passed:
        raise VerificationError(
            f"{plan.spec.name}: the raw-frame graph differs from the float graph; no artifact written. "
            + " | ".join(report.failures()[:3])
        )
    model_path.write_bytes(framed_bytes)
    return framed, report


def _weights_record(plan: ExportPlan) -> dict[str, Any] | None:
    """What `reference_model` needs to rebuild the PyTorch model, the checksum included."""
    if plan.imported is not None:
        imported = plan.imported
        return {"path": str(imported.path.resolve()), "sha256": imported.sha256(), "format": imported.format}
    if plan.weights is not None:
        return {"path": str(plan.weights.path.resolve()), "sha256": sha256_file(plan.weights.path)}
    return None
