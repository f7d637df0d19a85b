"""`segexport bench`'s accuracy columns: each row against PyTorch FP32 through the comparator
`verify` and `quantize` use, judged by the default tolerance of the file's precision.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from segexport.bench.options import BenchRequest, Progress
from segexport.bench.rows import Row
from segexport.compare import default_tolerance
from segexport.data import EvaluationImages, evaluation_images
from segexport.errors import SegexportError, first_line
from segexport.quantize import evaluation_set, measure
from segexport.reference import data_size
from segexport.runtime import Runner


def evaluate(
    rows: list[Row],
    runners: dict[int, Runner],
    manifest: dict[str, Any],
    request: BenchRequest,
    folder: EvaluationImages | None,
    threads: int,
    trained: bool,
    say: Progress,
) -> str:
    """mIoU and argmax agreement with PyTorch FP32 per row; `verify-failed` where the
    comparator's default tolerance for the file's precision is missed."""
    if not trained:
        return "- (random weights): accuracy means nothing on random weights; timed only"
    if not runners:
        return "no row ran"
    try:
        data = None if folder is None else folder.source
        evalset = evaluation_set(manifest, request.eval_images, threads, data)
    except SegexportError as error:
        return f"not measured: {first_line(error)}"
    say(f"evaluating {len(runners)} row(s) on {len(evalset.feeds)} {request.data} images")
    for index, runner in runners.items():
        row = rows[index]
        tolerance = None if row.file is None else default_tolerance(row.file)  # None: the reference
        try:
            figures = measure(runner, evalset, threads, tolerance)
        except Exception as error:  # e.g. an engine built for sizes below the evaluation size
            row.reason = f"accuracy not measured: {first_line(error)}"
            continue
        row.accuracy = {k: figures.get(k) for k in ("agreement", "miou", "rel_l2", "images")}
        if tolerance is None:
            continue
        row.accuracy["tolerance"] = asdict(tolerance)
        if figures["reasons"]:
            row.status, row.reason = "verify-failed", "; ".join(figures["reasons"])
    source = "the synthetic eval split" if request.data == "synthetic" else request.data
    return (
        f"on {len(evalset.feeds)} images of {source} at {'x'.join(map(str, data_size(manifest)))}; "
        "agreement: argmax agreement with PyTorch FP32; verify-failed: outside verify's default tolerance"
    )


def labelled_folder(data: str, manifest: dict[str, Any], count: int) -> EvaluationImages | None:
    """`--data DIR` opened and checked against the model's classes before any timing (None for
    synthetic, which quantize's evaluation split serves)."""
    if data == "synthetic":
        return None
    classes = manifest["model"]["class_names"]
    folder = evaluation_images(data, classes, count, data_size(manifest), need_labels=True)
    for index in range(folder.count):  # a wrong-size mask or an out-of-range label: refused now,
        folder.items[index]  # as eval and verify refuse it, not "accuracy not measured" later
    return folder
