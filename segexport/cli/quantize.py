"""`segexport quantize`: FP16 and INT8 ONNX, calibrated and verified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segexport.cli._base import FRACTION, POSITIVE, Float, echo_json, main, progress
from segexport.cli.options import (
    artifacts_option,
    force_option,
    json_option,
    limit_option,
    model_option,
    precision_flags,
    threads_option,
    weights_option,
)


@main.command("quantize")
@model_option("Zoo name (exports first when the artifact has no model.onnx).")
@artifacts_option()
@weights_option("Checkpoint for the export step, or 'demo'.")
@precision_flags(
    {
        "--fp16": "Write model.fp16.onnx.",
        "--int8": "Write model.int8.onnx (Q/DQ for TensorRT).",
        "--int8-cpu": "Write model.int8-cpu.onnx: asymmetric UINT8 Q/DQ for ONNX Runtime on x86 CPUs "
        "(not TensorRT).",
    }
)
@click.option(
    "--cpu-isa",
    type=click.Choice(["auto", "vnni", "avx2"]),
    default="auto",
    show_default=True,
    help="INT8 arithmetic of the CPU --int8-cpu targets: vnni (exact; full-range weights) or avx2 "
    "(saturating; 7-bit weights, exact on both). auto: this machine's, found by running its kernels.",
)
@click.option("--calib", default="synthetic", show_default=True, help="'synthetic' or a folder of images.")
@click.option("--calib-size", type=POSITIVE, default=64, show_default=True, help="Calibration images.")
@click.option(
    "--method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="percentile",
    show_default=True,
    help="Activation ranges. percentile: best or tied on every demo model and scheme (docs/precision.md).",
)
@click.option(
    "--percentile",
    type=Float(0.0, 100.0, min_open=True),
    default=99.99,
    show_default=True,
    help="With --method percentile: the percentile of activations that sets the range.",
)
@click.option("--calib-cache", type=click.Path(path_type=Path), help="Reuse (or create) a calib.json.")
@click.option(
    "--min-agreement",
    type=FRACTION,
    default=0.99,
    show_default=True,
    help="INT8 argmax agreement with PyTorch FP32 below which sensitive layers stay float.",
)
@limit_option("Held-out images for verification.", 16)
@force_option("Replace existing precision files.")
@threads_option()
@json_option()
def quantize(as_json: bool, fp16: bool, int8: bool, **params: Any) -> None:
    """FP16 and INT8 (Q/DQ) ONNX, calibrated and verified against PyTorch FP32."""
    from segexport.quantize import QuantizeRequest, quantize_artifact

    both = not (fp16 or int8 or params["int8_cpu"])
    request = QuantizeRequest(**params, fp16=fp16 or both, int8=int8 or both)
    manifest = quantize_artifact(request, progress=progress)
    if as_json:
        echo_json({"ok": True, "model": manifest["model"]["name"], "precisions": manifest["precisions"]})
        return
    for name, result in manifest["precisions"].items():
        miou = f", mIoU {result['miou']:.4f}" if "miou" in result else ""
        agreement = "" if result["agreement"] is None else f"agreement {result['agreement']:.4%}, "
        click.echo(f"  {name:>8}: {agreement}rel L2 {result['rel_l2']:.2e}{miou}")
        for line in _int8_details(result):
            click.echo(f"            {line}")


def _int8_details(result: dict[str, Any]) -> list[str]:
    """What quantize decided for an INT8 graph: its CPU target and the layers it kept float."""
    lines = []
    if "cpu_isa" in result:
        isa = result["cpu_isa"]
        lines.append(f"target CPU: {isa['target']} ({isa['meaning']}); this machine: {isa['detected_here']}")
    fallback = result.get("sensitivity_fallback") or []
    if fallback:
        layers = ", ".join(f"{f['node']} (+{f['benefit']:.2%})" for f in fallback)
        lines.append(
            f"kept float after the sensitivity analysis ({result['layers_measured']} layers measured): "
            f"{layers}; "
            f"{result['fallback_cost_share']:.1%} of the quantized layers' work, agreement "
            f"{result['agreement_without_fallback']:.4%} without them"
        )
    return lines
