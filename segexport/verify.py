"""The `verify` stage: parity of every artifact in a directory with the model it came from.

On real data (or seeded random inputs at extra shapes), through the comparator in
`segexport.compare` and the PyTorch reference in `segexport.reference`; failures are
localised to the first diverging node (`segexport.localize`) and written up by
`segexport.report`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from segexport.compare import (
    OutputStats,
    predicted_labels,
)
from segexport.data import EvalBatch, EvaluationImages, evaluation_images
from segexport.errors import SegexportError, first_line
from segexport.export import retrace
from segexport.localize import Localization, localize, module_scopes
from segexport.prerequisites import artifact_directory
from segexport.reference import (
    FOREIGN_SOURCES,
    TorchRunner,
    data_size,
    reference_runner,
    source_kind,
    spec_for,
    verify_runners,
)
from segexport.report import ArtifactResult, ParityReport, WorstImage, check_report_paths, finish_report
from segexport.runtime import Runner, open_runner, preprocess_for
from segexport.runtime.artifacts import read_manifest, vouched_bytes, vouched_path
from segexport.runtime.files import FP32_ONNX
from segexport.runtime.outputs import artifact_files
from segexport.shapes import DynamicRange, InputShape
from segexport.verify_recorded import PRECISIONS, REPORT_NAME, select_files
from segexport.zoo.registry import ModelSpec

# --------------------------------------------------------------------------- the verify stage

AGAINST = ("pytorch", "onnx")
# A `--from-onnx` artifact has no PyTorch model: its FP32 ONNX is the reference of every stage.
ADOPTED_REFERENCE = "the reference itself (an adopted --from-onnx artifact: its FP32 ONNX is the reference)"
PROGRESS_EVERY = 16  # images between progress lines
_BATCH_VALUES = 1 << 25  # output values per batch: bounds memory at large sizes/class counts


@dataclass
class VerifyRequest:
    """Everything `segexport verify` takes."""

    artifacts: Path | None = None
    model: str | None = None
    weights: str | None = None  # the reference checkpoint when the recorded path moved; `demo`
    against: str = "pytorch"
    data: str = "synthetic"
    limit: int = 32
    shapes: list[InputShape] | None = None
    precision: str = "all"
    atol: float | None = None
    rtol: float | None = None
    min_agreement: float | None = None
    report: Path | None = None  # default: ARTIFACTS/verify_report.md
    threads: int | None = None
    module: Any = None  # API: a user's nn.Module, the PyTorch reference of a `segexport.export` artifact


def verify_artifacts(request: VerifyRequest, progress: Callable[[str], None] | None = None) -> ParityReport:
    """Check every selected artifact against the reference on real data; write the reports.

    Returns the report; `passed` is False when any artifact failed (the CLI exits 1).
    User mistakes (bad options, unvouched files) raise SegexportError before any work.
    """

    say = progress or (lambda _message: None)
    started = time.perf_counter()
    _check_request(request)
    directory = artifact_directory(request.artifacts, request.model, request.weights, say)
    manifest = read_manifest(directory)
    spec = spec_for(manifest)
    if spec.input_kind != "image":
        raise SegexportError(f"{spec.name}: verify handles image models")
    selected, skipped = select_files(
        directory, manifest, request.precision, request.rtol, request.min_agreement, request.atol
    )
    for result in selected:  # checksums first: nothing runs unless every file is vouched for
        vouched_path(directory, result.file, manifest)
    if request.against == "onnx":
        vouched_path(directory, FP32_ONNX, manifest)
    shapes = _check_shapes(request.shapes or [], manifest, spec)
    report_path = request.report or directory / REPORT_NAME
    data_folder = None if request.data == "synthetic" else Path(request.data)
    check_report_paths(report_path, [r.file for r in selected], [data_folder, *artifact_files(directory)])
    reference = _reference_runner(request, directory, manifest, spec.output_names)
    say(f"reference: {reference.name}")
    runners = _open_candidates(selected, directory, manifest, request)
    classes = manifest["model"]["class_names"]
    data = evaluation_images(request.data, classes, request.limit, data_size(manifest))
    _run_data(data, manifest, reference, runners, selected, spec.logits_outputs, say)
    for result in selected:
        if result.file not in runners:
            continue
        if shapes and result.reason is None:
            say(f"{result.file}: {len(shapes)} random-input shapes")
            classes = manifest["model"]["num_classes"]
            assert result.tolerance is not None
            checked = verify_runners(spec, classes, reference, runners[result.file], shapes, result.tolerance)
            result.shapes = checked.shapes
        result.status = "failed" if result.failures() else "passed"
        say(f"{result.file} ({result.precision}): {result.status}" + _headline(result))
        if result.status == "failed":
            result.localization = _localize(result, request, directory, manifest, reference, data, say)
    report = ParityReport(
        spec.name,
        directory,
        request.against,
        reference.name,
        data.describe(),
        selected + skipped,
        manifest["preprocessing"],
    )
    return finish_report(report, started, report_path)


def _check_request(request: VerifyRequest) -> None:
    if request.against not in AGAINST:
        raise SegexportError(f"--against {request.against!r}: use one of {', '.join(AGAINST)}")
    if request.precision != "all" and request.precision not in PRECISIONS:
        raise SegexportError(f"--precision {request.precision!r}: use all or one of {', '.join(PRECISIONS)}")
    if request.limit < 1:
        raise SegexportError(f"--limit must be >= 1, got {request.limit}")
    if request.report is not None and request.report.suffix != ".md":
        raise SegexportError(f"--report {request.report}: name a .md file (the .json and .png go beside it)")


def _check_shapes(shapes: list[InputShape], manifest: dict[str, Any], spec: ModelSpec) -> list[InputShape]:
    """Refuse shapes the artifact does not promise to accept, before any work."""
    axes = manifest["dynamic_axes"]
    promised = DynamicRange(
        axes["batch"][0],
        axes["batch"][1],
        (axes["height"][0], axes["width"][0]),
        (axes["height"][1], axes["width"][1]),
    )
    for shape in shapes:
        assert shape.height is not None and shape.width is not None
        if not promised.contains(shape):
            raise SegexportError(f"--shapes {shape} is outside the artifact's range ({promised.describe()})")
        try:
            spec.check_size(shape.height, shape.width)
        except SegexportError as error:
            raise SegexportError(f"--shapes {shape}: {error}") from None
    return shapes


def _reference_runner(
    request: VerifyRequest, directory: Path, manifest: dict[str, Any], output_names: Sequence[str]
) -> Runner:
    if request.against == "onnx":
        return open_runner(directory, FP32_ONNX, manifest, request.threads)
    return reference_runner(manifest, directory, request.threads, request.weights, request.module)


def _open_candidates(
    selected: list[ArtifactResult], directory: Path, manifest: dict[str, Any], request: VerifyRequest
) -> dict[str, Runner]:
    runners = {}
    for result in selected:
        if result.status == "skipped":
            continue
        if result.file == FP32_ONNX and request.against == "onnx":
            result.status, result.reason = "skipped", "the reference itself (--against onnx)"
            continue
        if result.file == FP32_ONNX and source_kind(manifest) == "onnx":
            result.status, result.reason = "skipped", ADOPTED_REFERENCE
            continue
        runners[result.file] = open_runner(directory, result.file, manifest, request.threads)
        result.runner = runners[result.file].name
    return runners


def _run_data(
    data: EvaluationImages,
    manifest: dict[str, Any],
    reference: Runner,
    runners: dict[str, Runner],
    selected: list[ArtifactResult],
    logits_outputs: Sequence[str],
    say: Callable[[str], None],
) -> None:
    """Every image through the reference once and through every candidate; figures accumulate."""
    active = [r for r in selected if r.file in runners]
    names = reference.output_names
    stats = {r.file: [OutputStats(n, n in logits_outputs) for n in names] for r in active}
    label_output = next((i for i, n in enumerate(names) if n in logits_outputs), None)
    height, width = data.size
    say(f"checking {len(active)} artifact(s) on {data.count} {data.source} images at {height}x{width}")
    done = 0
    max_batch = int(manifest["dynamic_axes"]["batch"][1])
    prep = manifest["preprocessing"]
    for batch in data.batches(_batch_size(data, reference, max_batch, prep), prep):
        feeds = {"image": batch.inputs}
        expected = reference.infer(feeds)
        for result in active:
            if result.reason is not None:
                continue
            clock = time.perf_counter()
            try:
                actual = runners[result.file].infer(feeds)
            except Exception as error:  # the runtime's own error types
                result.reason = f"the runtime failed: {first_line(error)}"
                continue
            for index, (name, output) in enumerate(zip(names, stats[result.file], strict=True)):
                agreement = output.add(expected[name], actual[name], batch.truth)
                if index == label_output and agreement is not None:
                    _track_worst(result, batch, agreement, expected[name], actual[name])
            result.seconds += time.perf_counter() - clock
        before, done = done, done + len(batch.inputs)
        if done // PROGRESS_EVERY > before // PROGRESS_EVERY or done == data.count:
            say(f"  {done}/{data.count} images")
    for result in active:
        if result.reason is None:
            assert result.tolerance is not None
            result.outputs = [output.result(result.tolerance) for output in stats[result.file]]


def _batch_size(data: EvaluationImages, reference: Runner, max_batch: int, prep: dict[str, Any]) -> int:
    """Images per run: 8, fewer when one image's outputs are large or the artifact's batch is."""
    probe = reference.infer({"image": preprocess_for(prep, np.zeros((1, *data.size, 3), dtype=np.uint8))})
    values = max(sum(int(v.size) for v in probe.values()), 1)
    return max(1, min(8, max_batch, _BATCH_VALUES // values))


def _track_worst(
    result: ArtifactResult, batch: EvalBatch, agreement: np.ndarray, expected: np.ndarray, actual: np.ndarray
) -> None:
    index = int(np.argmin(agreement))
    if result.worst is not None and result.worst.agreement <= agreement[index]:
        return
    result.worst = WorstImage(
        batch.first + index,
        float(agreement[index]),
        batch.inputs[index : index + 1].copy(),
        predicted_labels(expected[index : index + 1])[0],
        predicted_labels(actual[index : index + 1])[0],
    )


def _headline(result: ArtifactResult) -> str:
    if result.reason:
        return f" ({result.reason})"
    labelled = [o for o in result.outputs if o.agreement is not None] or result.outputs
    if not labelled:
        return ""
    out = labelled[0]
    agreement = "" if out.agreement is None else f"agreement {out.agreement:.4%}, "
    return f": {agreement}rel L2 {out.rel_l2:.2e}"


def _localize(
    result: ArtifactResult,
    request: VerifyRequest,
    directory: Path,
    manifest: dict[str, Any],
    reference: Runner,
    data: EvaluationImages,
    say: Callable[[str], None],
) -> Localization | None:
    """Name the first node where a failing ONNX artifact's error jumps (None for engines)."""

    if not result.file.endswith(".onnx") or result.worst is None or result.tolerance is None:
        return None
    feeds = [{"image": result.worst.image}]  # a few images suffice: the worst, and the first
    if result.worst.index != 0:
        feeds.append({"image": next(data.batches(1, manifest["preprocessing"])).inputs})
    scopes = None
    try:
        if result.precision == "fp32":
            if not isinstance(reference, TorchRunner) or source_kind(manifest) in FOREIGN_SOURCES:
                return None  # retracing rebuilds a zoo model's export exactly; others are not retraced
            say(f"{result.file}: localising against a fresh FP32 export of the PyTorch model")
            raw, graph = retrace(manifest, reference.model)
            scopes, label = module_scopes(raw), "a fresh FP32 export of the PyTorch model"
        else:
            say(f"{result.file}: localising against model.onnx (FP32)")
            label = f"{FP32_ONNX} (FP32)"
            graph = onnx.load_from_string(vouched_bytes(directory, FP32_ONNX, manifest))
        candidate = onnx.load_from_string(vouched_bytes(directory, result.file, manifest))
        with tempfile.TemporaryDirectory(prefix="segexport-localize-") as workdir:
            return localize(
                graph, candidate, feeds, result.tolerance, Path(workdir), label, scopes, request.threads
            )
    except SegexportError as error:
        return Localization("", len(feeds), 0, None, [], f"not localised: {error}")
