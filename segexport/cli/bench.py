"""`segexport bench`: one table of every format and backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segexport.cli._base import POSITIVE, Float, echo_json, main, progress
from segexport.cli.options import (
    artifacts_option,
    data_option,
    force_option,
    json_option,
    limit_option,
    model_option,
    size_option,
    threads_option,
    weights_option,
)


@main.command("bench")
@artifacts_option("Benchmark this artifact as it is.")
@model_option("Zoo name: export (and quantize) it first, then benchmark.")
@weights_option("Checkpoint for --model, or 'demo' (default: seeded random weights, timed only).")
@click.option(
    "--formats",
    default="pytorch,onnx-fp32,onnx-fp16,onnx-int8,onnx-int8-cpu,engine-*",
    show_default=True,
    help="Comma-separated: pytorch, onnx-fp32, onnx-fp16, onnx-int8, onnx-int8-cpu, engine-fp32/fp16/int8.",
)
@click.option(
    "--backends",
    default="ort-cpu,ort-cuda,ort-trt,tensorrt",
    show_default=True,
    help="ONNX files run on the ort-* backends, engines on tensorrt; PyTorch is the CPU baseline.",
)
@click.option(
    "--scenario",
    type=click.Choice(["single-stream", "multi-stream", "offline"]),
    default="single-stream",
    show_default=True,
    help="After MLPerf's edge scenarios: p90 at batch 1; p99 of multi-frame queries; best-batch throughput.",
)
@size_option("HxW [the checkpoint's training size, else the model's default].")
@click.option(
    "--batch",
    "batches",
    help="Frames per query (multi-stream) [4], or batch sizes to try (offline) [1,4].",
)
@threads_option("CPU threads for every format [usable cores].")
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Untimed runs per format before timing, up to 1000.",
)
@click.option("--runs", type=POSITIVE, help="Timed runs per format, up to 100000 (instead of --seconds).")
@click.option("--seconds", type=Float(min=0.0, min_open=True), help="Timed seconds per format [2].")
@data_option("'synthetic' or a labelled folder.")
@limit_option("Images for mIoU/agreement, up to 10000.", 8)
@click.option(
    "--max-seconds",
    type=Float(min=0.0, min_open=True),
    help="Wall-clock budget: warm-up and timing loops stop when it is spent [no budget].",
)
@click.option(
    "--profile",
    is_flag=True,
    help="Also a per-op profile of each ONNX Runtime row: share of kernel time per op type [off].",
)
@click.option("--report", type=click.Path(path_type=Path), help="Also write the table as Markdown (.md).")
@click.option(
    "--plot", type=click.Path(path_type=Path), help="Latency vs mIoU plot (.png; segexport[bench])."
)
@force_option("Replace an existing --report/--plot file.")
@json_option("Print the JSON result only.")
def bench(
    as_json: bool, batches: str | None, report: Path | None, plot: Path | None, force: bool, **params: Any
) -> None:
    """One table of every format and backend: status, size, latency percentiles, FPS, memory, mIoU."""
    from segexport.bench import BenchRequest, bench_reads, check_request, parse_batches, run_bench
    from segexport.bench.report import check_outputs, format_report, write_plot, write_report
    from segexport.report import json_safe

    request = BenchRequest(**params, batches=None if batches is None else parse_batches(batches))
    check_request(request)
    check_outputs(report, plot, force, bench_reads(request))
    if plot is not None:
        import matplotlib  # noqa: F401  (the [bench] extra, checked before minutes of work)
    result = run_bench(request, progress=progress)
    if report is not None:
        write_report(result, report)
    if plot is not None:
        write_plot(result, plot)
    if as_json:
        echo_json(json_safe(result.to_dict()))
        return
    click.echo(format_report(result), nl=False)
    for path in (report, plot):
        if path is not None:
            click.echo(f"wrote {path}")
