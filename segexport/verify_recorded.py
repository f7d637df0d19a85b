"""`segexport verify` where PyTorch is not installed: every file against the recorded reference.

On a Jetson the base install (numpy, ONNX Runtime) and TensorRT are what there is; the
artifact's reference.npz holds PyTorch's outputs from export time, and
`segexport.runtime.judge` compares each model file with them under the same bounds as the
PyTorch rerun. The reports say that PyTorch was not rerun. Which files are judged
(`select_files`) is shared with the PyTorch verify, so both check the same set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segexport.compare import default_tolerance
from segexport.errors import SegexportError
from segexport.report import ArtifactResult, ParityReport, check_report_paths, finish_report
from segexport.runtime import open_runner
from segexport.runtime.artifacts import read_manifest, vouched_path
from segexport.runtime.engine_records import profile_problem, tensorrt_unavailable_reason
from segexport.runtime.files import judged_precision
from segexport.runtime.judge import NOT_RERUN, judge_runner
from segexport.runtime.outputs import artifact_files
from segexport.runtime.recorded import read_reference

PRECISIONS = ("fp32", "fp16", "int8", "engine")
NO_TENSORRT = "TensorRT is not importable on this machine"
REPORT_NAME = "verify_report.md"


def select_files(
    directory: Path,
    manifest: dict[str, Any],
    wanted: str,
    rtol: float | None,
    min_agreement: float | None,
    atol: float | None,
) -> tuple[list[ArtifactResult], list[ArtifactResult]]:
    """The manifest's model files of the wanted precision, and unlisted model files (refused)."""
    listed = sorted(
        (name for name in manifest["files"] if judged_precision(name)),
        key=lambda name: (PRECISIONS.index(str(judged_precision(name))), name),
    )
    selected = []
    for name in listed:
        precision = judged_precision(name)
        assert precision is not None
        if wanted not in ("all", precision):
            continue
        tolerance = default_tolerance(name).override(rtol, min_agreement, atol)
        result = ArtifactResult(name, precision, "pending", tolerance)
        if precision == "engine" and tensorrt_unavailable_reason() is not None:
            result.status, result.reason = "skipped", NO_TENSORRT
        selected.append(result)
    if not selected:
        held = ", ".join(listed) or "no model files"
        raise SegexportError(f"{directory}: no {wanted} artifact in its manifest (it lists {held})")
    unlisted = sorted(
        path.name
        for path in directory.iterdir()
        if path.is_file() and judged_precision(path.name) and path.name not in manifest["files"]
    )
    skipped = [
        ArtifactResult(
            name, str(judged_precision(name)), "skipped", reason="not listed in manifest.json; refused"
        )
        for name in unlisted
    ]
    return selected, skipped


def verify_recorded(
    directory: Path,
    precision: str = "all",
    *,
    rtol: float | None = None,
    min_agreement: float | None = None,
    atol: float | None = None,
    report_path: Path | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ParityReport:
    """Judge every selected file of the artifact against reference.npz; write the reports.

    `passed` is False when a file failed (the CLI exits 1); a bad or missing reference and
    unvouched files raise SegexportError before any file runs.
    """
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    manifest = read_manifest(directory)
    selected, skipped = select_files(directory, manifest, precision, rtol, min_agreement, atol)
    for result in selected:  # checksums first: nothing runs unless every file is vouched for
        vouched_path(directory, result.file, manifest)
    reference = read_reference(directory, manifest)
    report_path = report_path or directory / REPORT_NAME
    check_report_paths(report_path, [r.file for r in selected], artifact_files(directory))
    say(f"reference: {NOT_RERUN}")
    max_batch = int(manifest["dynamic_axes"]["batch"][1])
    for result in selected:
        if result.status == "skipped":
            continue
        runner = open_runner(directory, result.file, manifest, threads)
        result.runner = runner.name
        record = manifest.get("engines", {}).get(result.file)
        batch, fits = max_batch, None
        if record is not None:  # an engine runs only the shapes of its profile

            def fits(shape: tuple[int, ...], record: dict[str, Any] = record) -> bool:
                return profile_problem(record, {"image": shape}) is None

            batch = min(max_batch, int(record["profile"]["image"]["max"][0]))
        clock = time.perf_counter()
        assert result.tolerance is not None
        judgement = judge_runner(reference, runner, result.tolerance, batch, fits)
        result.seconds = time.perf_counter() - clock
        result.outputs, result.shapes, result.reason = judgement.outputs, judgement.shapes, judgement.error
        result.status = "failed" if result.failures() else "passed"
        say(f"{result.file} ({result.precision}): {result.status}" + _headline(judgement.label_output()))
    images = reference.images
    data = {
        "source": "recorded at export (reference.npz)",
        "images": 0 if images is None else len(images.images),
        "size": [] if images is None else list(images.images.shape[1:3]),
        "labels": images is not None and images.truth is not None,
        "note": NOT_RERUN,
    }
    report = ParityReport(
        manifest["model"]["name"],
        directory,
        "pytorch-recorded",
        "pytorch FP32, recorded at export (not rerun)",
        data,
        selected + skipped,
        manifest["preprocessing"],
    )
    return finish_report(report, started, report_path)


def _headline(output: Any) -> str:
    if output is None:
        return ""
    agreement = "" if output.agreement is None else f"agreement {output.agreement:.4%}, "
    miou = "" if output.miou is None else f"mIoU {output.miou:.4f}, "
    return f": {agreement}{miou}rel L2 {output.rel_l2:.2e}"
