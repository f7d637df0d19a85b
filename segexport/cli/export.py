"""`segexport onnx`: export, simplify and verify against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segexport.cli._base import NON_NEGATIVE, POSITIVE, echo_json, main, progress, shapes
from segexport.cli.options import (
    force_option,
    json_option,
    max_batch_option,
    model_arg_option,
    model_option,
    size_option,
    threads_option,
    weights_option,
)


@main.command("onnx")
@model_option("Zoo name or alias [default: the model the --weights describe, else segformer-b0].")
@weights_option(
    "state_dict (.pt/.pth/.safetensors), 'demo' for the shipped checkpoint, or weights from "
    "elsewhere: a Hugging Face SegFormer directory, an mmseg/timm/port checkpoint "
    "(docs/own-weights.md)."
)
@click.option(
    "--num-classes", type=POSITIVE, help="Classes of the head (default: the checkpoint's or model's)."
)
@size_option("Export HxW, e.g. 512x512 [the checkpoint's training size, else the model's default].")
@click.option("--batch", type=POSITIVE, default=1, show_default=True, help="Export batch size.")
@size_option("Smallest HxW the artifact accepts.", name="--min-size")
@size_option("Largest HxW the artifact accepts.", name="--max-size")
@max_batch_option("Largest batch the artifact accepts.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset version.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Artifact dir [artifacts/MODEL].")
@force_option("Replace an existing artifact directory (only a segexport one).")
@click.option(
    "--allow-large",
    is_flag=True,
    help="Lift the size caps (8 Mpx per verified shape, 8192 per side, batch 1024).",
)
@click.option("--verify-shapes", callback=shapes, help="Extra BxHxW shapes to verify, comma-separated.")
@click.option(
    "--rtol",
    "max_rel_l2",
    type=NON_NEGATIVE,
    default=1e-4,
    show_default=True,
    help="Largest relative L2 error accepted.",
)
@model_arg_option("Model option KEY=VALUE (e.g. fc_channels=1024); repeatable.")
@threads_option()
@click.option(
    "--head",
    type=click.Choice(["logits", "mask", "logits+mask"]),
    default="logits",
    show_default=True,
    help="Graph outputs: class logits, a 'mask' of class ids (ArgMax in the graph), or both.",
)
@click.option(
    "--mask-dtype",
    type=click.Choice(["uint8", "int32"]),
    default="uint8",
    show_default=True,
    help="Type of the mask's class ids.",
)
@json_option("Print a JSON summary on stdout.")
def onnx(as_json: bool, max_rel_l2: float, **params: Any) -> None:
    """Export a model to ONNX with dynamic axes, simplify it, and verify it against PyTorch."""
    from segexport.compare import Tolerance
    from segexport.export import ExportRequest, export_onnx

    request = ExportRequest(**params, tolerance=Tolerance(max_rel_l2=max_rel_l2))
    manifest = export_onnx(request, progress=progress)
    summary = export_summary(manifest, request.out_dir or Path("artifacts") / manifest["model"]["name"])
    if as_json:
        echo_json(summary)
        return
    for shape in summary["verification"]:
        for out in shape["outputs"]:
            click.echo(_output_line(shape["shape"], out))
    click.echo(f"wrote {summary['artifact']} ({summary['seconds']['total']:.1f} s)")


def _output_line(shape: str, out: dict[str, Any]) -> str:
    """One output's errors at one verified shape."""
    if out["rel_l2"] is None:  # class ids
        return f"  {shape:>12} {out['name']}: class ids agree {out['agreement']:.4%}"
    agreement = "" if out["agreement"] is None else f", argmax agreement {out['agreement']:.4%}"
    return f"  {shape:>12} {out['name']}: rel L2 {out['rel_l2']:.2e}, max abs {out['max_abs']:.2e}{agreement}"


def export_summary(manifest: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The compact view of an export that `--json` prints."""
    fp32 = manifest["verification"]["fp32"]
    return {
        "ok": fp32["passed"],
        "model": manifest["model"]["name"],
        "artifact": str(directory),
        "onnx": str(directory / "model.onnx"),
        "inputs": manifest["inputs"],
        "outputs": manifest["outputs"],
        "dynamic_axes": manifest["dynamic_axes"],
        "simplified": manifest["onnx"]["simplified"],
        "nodes": manifest["onnx"]["nodes"],
        "seconds": manifest["seconds"],
        "head": manifest.get("head"),
        "verification": [
            {
                "shape": shape["shape"],
                "passed": shape["passed"],
                "error": shape["error"],
                "outputs": [
                    # a mask's class ids have no error norms (NaN): null in JSON
                    {
                        k: None if out[k] != out[k] else out[k]
                        for k in ("name", "max_abs", "rel_l2", "agreement", "passed")
                    }
                    for out in shape["outputs"]
                ],
            }
            for shape in fp32["shapes"]
        ],
    }
