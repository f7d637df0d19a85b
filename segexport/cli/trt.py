"""`segexport trt` and `check-trt`: TensorRT engines, and whether TensorRT will take the graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segexport.cli._base import Float, echo_json, main, progress, take_fields
from segexport.cli.options import (
    artifacts_option,
    force_option,
    json_option,
    max_batch_option,
    model_option,
    size_option,
    threads_option,
    weights_option,
)


@main.command("trt")
@click.option(
    "--precision",
    type=click.Choice(["fp16", "int8", "fp32"]),
    default="fp16",
    show_default=True,
    help="fp16: strongly typed from model.fp16.onnx; int8: from the Q/DQ model.int8.onnx; "
    "fp32: from model.onnx. (--fp16/--int8/--fp32: deprecated spellings.)",
)
@model_option("Zoo name; runs the missing earlier stages first.")
@weights_option("Checkpoint for the export step [the shipped demo checkpoint if any].")
@artifacts_option()
@size_option("Smallest HxW of the profile [the ONNX's range].", name="--min-size")
@size_option("HxW TensorRT tunes for [the export size].", name="--opt-size")
@size_option("Largest HxW of the profile [the ONNX's range].", name="--max-size")
@max_batch_option("Largest batch of the profile [the ONNX's range].")
@click.option(
    "--workspace",
    "workspace_gib",
    type=Float(min=0.0, min_open=True),
    help="Builder workspace limit in GiB [half the device's free memory].",
)
@click.option(
    "--timing-cache",
    type=click.Path(path_type=Path),
    help="Timing cache to read and update [ARTIFACTS/timing.cache].",
)
@click.option(
    "--calib",
    help="Calibration images for the INT8 stage when it runs first: a folder of images [synthetic].",
)
@click.option(
    "--opt-level", type=click.IntRange(0, 5), help="Builder optimization level 0-5 [TensorRT's default, 3]."
)
@click.option(
    "--dla-core", type=click.IntRange(min=0), help="Build for this DLA core (Jetson, TensorRT 10.x)."
)
@click.option("--gpu-fallback", is_flag=True, help="With --dla-core: run unsupported layers on the GPU.")
@click.option("--version-compatible", is_flag=True, help="Engine that later TensorRT releases can run.")
@click.option(
    "--hardware-compat",
    type=click.Choice(["same", "ampere+"]),
    default="same",
    show_default=True,
    help="GPUs the engine may run on.",
)
@click.option(
    "--legacy-fp16-flag", is_flag=True, help="TensorRT 10.x only: weakly typed FP16 from the FP32 ONNX."
)
@force_option("Replace an existing engine.")
@click.option(
    "--ignore-readiness", is_flag=True, help="Build even if check-trt finds errors for this TensorRT."
)
@threads_option("CPU threads for the earlier stages and the check.")
@json_option()
def trt(as_json: bool, precision: str, **params: Any) -> None:
    """Build a TensorRT engine (10.x or 11.x) from the verified precision ONNX, then check it."""
    from segexport.build import BuildOptions, BuildRequest, build_artifact
    from segexport.runtime.files import engine_file_name

    options = BuildOptions(**take_fields(params, BuildOptions), precision=precision)
    if params["model"] is None and params["artifacts"] is None:
        params["model"] = "segformer-b0"
    manifest = build_artifact(BuildRequest(options, **params), progress=progress)
    name = engine_file_name(options.precision)
    record = manifest["engines"][name]
    if as_json:
        echo_json({"ok": True, "engine": name, **record})
        return
    click.echo(
        f"wrote {name}: TensorRT {record['tensorrt']} on {record['gpu']['name']}, "
        f"{record['build_seconds']:.1f} s"
    )


@main.command("check-trt")
@artifacts_option("Artifact directory to check.", required=True)
@click.option(
    "--target",
    type=click.Choice(["10.3", "10.x", "11.x", "all"]),
    default="all",
    show_default=True,
    help="TensorRT release(s) whose parser rules apply (10.x: the newest 10.x with rules, 11.x likewise).",
)
@json_option()
@click.pass_context
def check_trt(ctx: click.Context, artifacts: Path, target: str, as_json: bool) -> None:
    """Will TensorRT's ONNX parser take these graphs? Offline, per release; exit 1 on errors."""
    from segexport.readiness import check_artifacts, format_report

    report = check_artifacts(artifacts, target)
    if as_json:
        echo_json({"ok": report["errors"] == 0, **report})
    else:
        for line in format_report(report):
            click.echo(line)
    if report["errors"]:
        ctx.exit(1)
