"""`segexport onnx`: export, simplify and verify against PyTorch; `reference`: record its outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segexport.cli._base import NON_NEGATIVE, POSITIVE, echo_json, main, progress, shapes
from segexport.cli.options import (
    artifacts_option,
    force_option,
    json_option,
    max_batch_option,
    model_arg_option,
    model_option,
    size_option,
    threads_option,
    weights_option,
)
from segexport.runtime.preprocessing import DEFAULT_INPUT_FORMAT, INPUT_FORMATS


def _triple(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    """Callback: `a,b,c` as three floats."""
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 3:
        raise click.BadParameter(f"{value!r} is not three comma-separated numbers")
    return numbers


@main.command("onnx")
@model_option(
    "Zoo name or alias [default: the model the --weights describe, else segformer-b0], or your own "
    "model's factory: path/file.py:FUNCTION or package.module:FUNCTION (returns an nn.Module; "
    "IMPORTING THE FILE RUNS ITS CODE, as `python file.py` would)."
)
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
@click.option(
    "--input-format",
    type=click.Choice(list(INPUT_FORMATS)),
    default=DEFAULT_INPUT_FORMAT,
    show_default=True,
    help="What the graph takes: normalised float NCHW, or raw RGB uint8 frames [N, H, W, 3] "
    "normalised inside the graph (a quarter of the bytes to upload; the runtime feeds frames).",
)
@click.option(
    "--from-onnx",
    "from_onnx",
    type=click.Path(path_type=Path),
    help="Adopt an ONNX made elsewhere (one NCHW float image input, a class-score output) [default: none].",
)
@click.option(
    "--output-key",
    help="Your model's or ONNX's output holding the class scores (dict key, tuple index or output name) "
    "[default: the only 4-D output, else 'logits', else 'out'].",
)
@click.option(
    "--upsample",
    type=click.Choice(["bilinear", "none"]),
    default="bilinear",
    show_default=True,
    help="Your model's lower-resolution scores: resized to the input in the graph, "
    "or kept (the runtime resizes).",
)
@click.option(
    "--stride", type=POSITIVE, help="Your model's size rule: H and W multiples of it [default: probed]."
)
@click.option(
    "--classes", help="Your model's class names, comma-separated [default: the config's, else class_0..]."
)
@click.option(
    "--mean",
    callback=_triple,
    help="Your model's normalisation mean, 0..1 scale, e.g. 0.485,0.456,0.406 "
    "[default: ImageNet's, recorded as assumed].",
)
@click.option(
    "--std",
    callback=_triple,
    help="Your model's normalisation std, 0..1 scale [default: ImageNet's, recorded as assumed].",
)
@json_option("Print a JSON summary on stdout.")
def onnx(as_json: bool, max_rel_l2: float, **params: Any) -> None:
    """Export a model to ONNX with dynamic axes, simplify it, and verify it against PyTorch.

    Three doors: a zoo name (`--model segformer-b0`), your own factory
    (`--model my_model.py:build`, which imports and runs that file), or an ONNX file
    (`--from-onnx model.onnx`). See docs/your-model.md.
    """
    from segexport.compare import Tolerance
    from segexport.export import ExportRequest, export_onnx
    from segexport.sources.factory import is_factory

    own = {
        k: params.pop(k) for k in ("from_onnx", "output_key", "upsample", "stride", "classes", "mean", "std")
    }
    if own["from_onnx"] is not None or is_factory(params["model"]):
        manifest = _own_model(own, params, max_rel_l2)
    else:
        given = [
            f"--{k.replace('_', '-')}" for k in ("output_key", "stride", "classes", "mean", "std") if own[k]
        ]
        if given:
            raise click.UsageError(
                f"{given[0]} applies to your own model (--model FILE.py:FUNCTION or --from-onnx)"
            )
        request = ExportRequest(**params, tolerance=Tolerance(max_rel_l2=max_rel_l2))
        manifest = export_onnx(request, progress=progress)
    out = params["out_dir"] or Path("artifacts") / manifest["model"]["name"].replace(":", "-").lower()
    summary = export_summary(manifest, out)
    if as_json:
        echo_json(summary)
        return
    for shape in summary["verification"]:
        for out in shape["outputs"]:
            click.echo(_output_line(shape["shape"], out))
    click.echo(f"wrote {summary['artifact']} ({summary['seconds']['total']:.1f} s)")


def _own_model(own: dict[str, Any], params: dict[str, Any], max_rel_l2: float) -> dict[str, Any]:
    """`--model FILE.py:FUNCTION` or `--from-onnx`: the user's model through the same stage."""
    from segexport.errors import SegexportError

    classes = [c.strip() for c in own["classes"].split(",")] if own["classes"] else None
    # What both doors take alike (an ONNX file, a factory's module).
    shared: dict[str, Any] = {
        "size": params["size"],
        "classes": classes,
        "mean": own["mean"],
        "std": own["std"],
        "out": params["out_dir"],
        "force": params["force"],
        "max_rel_l2": max_rel_l2,
        "threads": params["threads"],
        "progress": progress,
        "input_format": params["input_format"],
    }
    if own["from_onnx"] is not None:
        from segexport.export.adopt import adopt_onnx

        if params["model"] or params["weights"]:
            raise SegexportError("--from-onnx takes no --model or --weights: the ONNX file is the model")
        return adopt_onnx(own["from_onnx"], output_key=own["output_key"], **shared)
    from segexport.export import export
    from segexport.sources.factory import build_from_factory, load_user_weights

    module, factory = build_from_factory(params["model"], params["model_options"])
    source: dict[str, Any] = {"factory": factory, "arguments": params["model_options"], "weights": None}
    if params["weights"]:
        weights = Path(params["weights"])
        source["weights"] = {"path": str(weights.resolve()), "sha256": load_user_weights(module, weights)}
    if params["size"] is None:
        raise SegexportError("--model FILE.py:FUNCTION needs --size HxW (the size to export and probe at)")
    key = own["output_key"]
    return export(
        module,
        **shared,
        num_classes=params["num_classes"],
        min_size=params["min_size"],
        max_size=params["max_size"],
        max_batch=params["max_batch"] or 16,
        batch=params["batch"],
        output=int(key) if key is not None and key.isdigit() else key,
        upsample=own["upsample"],
        stride=own["stride"],
        opset=params["opset"],
        head=params["head"],
        source=source,
    )


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


@main.command("reference")
@artifacts_option("Artifact directory to record into.", required=True)
@weights_option("Checkpoint if the recorded path moved (sha256 must match), or 'demo'.")
@force_option("Replace an existing reference.npz.")
def reference(artifacts: Path, weights: str | None, force: bool) -> None:
    """Record PyTorch's outputs into the artifact (reference.npz), for verify and trt without PyTorch.

    `segexport onnx` records it; this adds one to an artifact made before it did.
    """
    from segexport.export.recording import add_reference

    add_reference(artifacts, weights, force, progress)
    click.echo(f"wrote {artifacts / 'reference.npz'}")
