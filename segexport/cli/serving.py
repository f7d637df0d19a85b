"""`segexport triton`: a Triton Inference Server model repository for an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segexport.cli._base import POSITIVE, echo_json, main, progress
from segexport.cli.options import (
    artifacts_option,
    force_option,
    json_option,
    max_batch_option,
    size_option,
)
from segexport.errors import SegexportError


@main.command("triton")
@artifacts_option("Artifact directory.", required=True)
@click.option("--repo", type=click.Path(path_type=Path), required=True, help="Triton model repository.")
@click.option("--name", help="Model name [MODEL-FORMAT, e.g. segformer-b0-onnx-fp16].")
@click.option(
    "--format",
    type=click.Choice(["onnx-fp32", "onnx-fp16", "onnx-int8", "engine"]),
    default="onnx-fp32",
    show_default=True,
    help="Which artifact file to serve (ONNX Runtime backend, or TensorRT plan).",
)
@click.option("--engine", help="Engine file when the artifact has several (e.g. model.fp16.engine).")
@max_batch_option("max_batch_size [the artifact's or profile's largest batch].", type=int)
@click.option("--instances", type=POSITIVE, default=1, show_default=True, help="Model instances per device.")
@click.option(
    "--kind",
    type=click.Choice(["gpu", "cpu"]),
    default="gpu",
    show_default=True,
    help="Where the instances run (Triton's instance group kind).",
)
@click.option("--dynamic-batching", is_flag=True, help="Let Triton combine requests into batches.")
@click.option("--preferred-batch", help="Preferred batch sizes, e.g. 4,8 (implies --dynamic-batching).")
@click.option(
    "--max-queue-delay-us",
    type=click.IntRange(min=0),
    help="How long a request may wait for a batch (implies it).",
)
@click.option(
    "--ort-trt",
    type=click.Choice(["fp16", "int8"]),
    help="ONNX Runtime's TensorRT accelerator at this precision (int8: the Q/DQ model.int8.onnx).",
)
@click.option("--cuda-graphs", is_flag=True, help="CUDA graphs for a plan, at the served size.")
@click.option("--ensemble", is_flag=True, help="Add Python pre/post-processing: raw images in, masks out.")
@size_option("HxW the ensemble resizes images to [the export size].")
@force_option("Replace existing model directories.")
@json_option()
def triton(as_json: bool, preferred_batch: str | None, **params: Any) -> None:
    """A Triton Inference Server model repository for an artifact, checked offline."""
    from segexport.serving.triton import TritonRequest, write_repository

    request = TritonRequest(**params, preferred_batch=_batch_sizes(preferred_batch))
    summary = write_repository(request, progress=progress)
    if as_json:
        echo_json({"ok": True, **summary})
        return
    for model in summary["models"]:
        click.echo(f"wrote {Path(summary['repository']) / model['name']}")
    click.echo(f"checked: {summary['checked']}")
    for note in summary["notes"]:
        click.echo(f"note: {note}")


def _batch_sizes(preferred_batch: str | None) -> tuple[int, ...]:
    """`--preferred-batch 4,8` as (4, 8)."""
    try:
        return tuple(int(part) for part in (preferred_batch or "").split(",") if part.strip())
    except ValueError:
        raise SegexportError(f"--preferred-batch {preferred_batch!r}: give sizes like 4,8") from None
