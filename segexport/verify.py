"""Parity between an artifact and the PyTorch model it came from.

One comparator (`compare_arrays`) with tolerances, and `verify_runners`, which feeds the
same random inputs of several shapes to a reference runner and a candidate runner. A
shape the candidate cannot run at all (a size baked into the graph) is a failure with
the runtime's message, not a crash: that is how dynamic axes that only look dynamic
are caught.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from torch import nn

from segexport.artifacts import read_manifest, sha256_file, vouched_path
from segexport.data import SYNTHETIC_CLASSES, ImageFolder, SyntheticScenes, open_dataset, resize
from segexport.engine import tensorrt_unavailable_reason
from segexport.errors import SegexportError, first_line
from segexport.metrics import confusion_matrix, iou_report
from segexport.runtime import Runner, open_runner, preprocess
from segexport.shapes import DynamicRange, InputShape
from segexport.weights import load_weights, resolve_weights
from segexport.zoo.registry import ModelSpec, create_model, get_spec

if TYPE_CHECKING:  # localize compares with this module's OutputStats
    from segexport.localize import Localization


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria for one output: relative L2, and optionally argmax agreement and max abs.

    The export stage's default (random weights, random inputs) is relative L2 <= 1e-4;
    `DEFAULT_TOLERANCES` holds the per-precision defaults of `segexport verify`.
    """

    max_rel_l2: float = 1e-4
    min_agreement: float | None = None
    max_abs: float | None = None

    def override(
        self,
        max_rel_l2: float | None = None,
        min_agreement: float | None = None,
        max_abs: float | None = None,
    ) -> Tolerance:
        """This tolerance with the bounds a user set on the command line replaced."""
        return Tolerance(
            self.max_rel_l2 if max_rel_l2 is None else max_rel_l2,
            self.min_agreement if min_agreement is None else min_agreement,
            self.max_abs if max_abs is None else max_abs,
        )


# Defaults per precision. Measured by `segexport verify --limit 64` on the three demo
# checkpoints (README): FP32 ONNX rel L2 ~2e-7, agreement 100%; FP16 rel L2 2e-4..5e-4,
# agreement >= 99.99%; INT8 Q/DQ rel L2 0.05..0.09, agreement 99.3..99.4%. The bounds sit
# 20x (FP16) and about 3x (INT8: rel L2, and the share of flipped labels) above those
# figures, loose enough for other images and calibrations, tight enough that one broken
# layer fails. An engine takes the bounds of the precision its file name names
# (model.int8.engine), else FP16's: TensorRT runs FP32 layers in TF32 by default.
DEFAULT_TOLERANCES = {
    "fp32": Tolerance(max_rel_l2=1e-4, min_agreement=0.999),
    "fp16": Tolerance(max_rel_l2=1e-2, min_agreement=0.995),
    "int8": Tolerance(max_rel_l2=0.25, min_agreement=0.98),
}


@dataclass
class OutputComparison:
    """Error figures of one output; over a data set they are sums over every value, not means."""

    name: str
    shape: list[int]
    max_abs: float
    mean_abs: float
    rel_l2: float
    agreement: float | None
    nonfinite: int  # NaN + Inf in the candidate
    passed: bool
    cosine: float = 1.0
    miou_vs_reference: float | None = None  # IoU of the candidate's labels against the reference's
    nan: int = 0
    reference_nonfinite: int = 0
    miou: float | None = None  # candidate against ground truth
    miou_reference: float | None = None  # reference against ground truth
    reasons: list[str] = field(default_factory=list)


@dataclass
class ShapeResult:
    shape: str
    passed: bool
    outputs: list[OutputComparison] = field(default_factory=list)
    error: str | None = None


@dataclass
class VerificationReport:
    reference: str
    candidate: str
    tolerance: Tolerance
    shapes: list[ShapeResult]

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.shapes)

    def failures(self) -> list[str]:
        """One line per failing shape/output, for error messages."""
        lines = []
        for result in self.shapes:
            if result.error:
                lines.append(f"shape {result.shape}: {result.error}")
            for out in result.outputs:
                if not out.passed:
                    lines.append(f"shape {result.shape}, output {out.name}: {'; '.join(out.reasons)}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, **asdict(self)}


def predicted_labels(logits: np.ndarray) -> np.ndarray:
    """Label maps of an output: argmax over classes, or the sign of single-channel mask logits."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).astype(np.int64)
    return logits.argmax(axis=1)


def label_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of positions whose predicted label matches.

    Many-channel outputs are class logits (argmax over axis 1); single-channel outputs
    are binary mask logits (sign).
    """
    return float(np.mean(predicted_labels(reference) == predicted_labels(candidate)))


class OutputStats:
    """Running figures of one output over many batches.

    Sums of squared error, squared norms, products and confusion matrices accumulate, so
    a data set's relative L2, cosine, agreement and mIoU are those of all its values at
    once, not averages of per-image ratios. NaN/Inf are counted and left out of the sums.
    """

    def __init__(self, name: str, labels: bool) -> None:
        self.name = name
        self.labels = labels
        self.shape: list[int] | None = None
        self.mismatch = False
        self.count = 0
        self.max_abs = 0.0
        self.sums = dict.fromkeys(("abs", "error", "norm", "candidate", "dot"), 0.0)
        self.nan = self.inf = self.reference_nonfinite = 0
        self.pairs: np.ndarray | None = None  # reference label x candidate label
        self.truth: dict[str, np.ndarray] = {}  # ground truth x candidate / x reference

    def add(
        self, reference: np.ndarray, candidate: np.ndarray, truth: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Accumulate one batch; returns the per-image argmax agreement for label outputs."""
        reference, candidate = np.atleast_1d(reference), np.atleast_1d(candidate)
        if reference.shape != candidate.shape or (self.shape and self.shape[1:] != list(candidate.shape[1:])):
            self.mismatch = True
            self.shape = list(candidate.shape)
            return None
        self.shape = [(self.shape[0] if self.shape else 0) + candidate.shape[0], *candidate.shape[1:]]
        ref = reference.astype(np.float32, copy=False)
        cand = candidate.astype(np.float32, copy=False)
        finite_ref, finite_cand = np.isfinite(ref), np.isfinite(cand)
        self.nan += int(np.isnan(cand).sum())
        self.inf += int(np.isinf(cand).sum())
        self.reference_nonfinite += int(ref.size - np.count_nonzero(finite_ref))
        if not (finite_ref.all() and finite_cand.all()):
            both = finite_ref & finite_cand
            ref, cand = ref[both], cand[both]
        diff = np.abs(cand - ref)
        self.count += diff.size
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
        self.sums["abs"] += float(diff.sum(dtype=np.float64))
        self.sums["error"] += float(np.square(diff).sum(dtype=np.float64))
        self.sums["norm"] += float(np.square(ref).sum(dtype=np.float64))
        self.sums["candidate"] += float(np.square(cand).sum(dtype=np.float64))
        self.sums["dot"] += float((ref * cand).sum(dtype=np.float64))
        if not self.labels or reference.ndim < 2:
            return None
        wanted, predicted = predicted_labels(reference), predicted_labels(candidate)
        classes = max(2, reference.shape[1])
        self.pairs = _accumulate(self.pairs, confusion_matrix(wanted, predicted, classes, ignore_index=-1))
        if truth is not None:
            truth = _at_resolution(truth, predicted.shape)
            if truth is not None:
                for key, labels in (("candidate", predicted), ("reference", wanted)):
                    self.truth[key] = _accumulate(
                        self.truth.get(key), confusion_matrix(truth, labels, classes)
                    )
        return np.mean((wanted == predicted).reshape(len(wanted), -1), axis=1)

    def result(self, tolerance: Tolerance) -> OutputComparison:
        """The figures so far, judged against `tolerance`."""
        shape = self.shape or []
        if self.mismatch:
            reason = f"shape {shape} differs from the reference's"
            return OutputComparison(
                self.name, shape, math.inf, math.inf, math.inf, None, 0, False, reasons=[reason]
            )
        norm, error = math.sqrt(self.sums["norm"]), math.sqrt(self.sums["error"])
        norms = norm * math.sqrt(self.sums["candidate"])
        if self.count == 0:  # nothing finite to compare
            max_abs = mean_abs = rel_l2 = cosine = math.nan
        else:
            max_abs, mean_abs = self.max_abs, self.sums["abs"] / self.count
            rel_l2 = error / max(norm, 1e-12)
            cosine = self.sums["dot"] / norms if norms > 0 else float(norm == 0 and error == 0)
        agreement = miou_pair = None
        if self.pairs is not None:
            agreement = float(np.trace(self.pairs) / max(int(self.pairs.sum()), 1))
            miou_pair = iou_report(self.pairs, _class_names(len(self.pairs))).miou
        truth = {
            key: iou_report(matrix, _class_names(len(matrix))).miou for key, matrix in self.truth.items()
        }
        comparison = OutputComparison(
            name=self.name,
            shape=shape,
            max_abs=max_abs,
            mean_abs=mean_abs,
            rel_l2=rel_l2,
            agreement=agreement,
            nonfinite=self.nan + self.inf,
            passed=True,
            cosine=cosine,
            miou_vs_reference=miou_pair,
            nan=self.nan,
            reference_nonfinite=self.reference_nonfinite,
            miou=truth.get("candidate"),
            miou_reference=truth.get("reference"),
        )
        comparison.reasons = judge(comparison, tolerance)
        comparison.passed = not comparison.reasons
        return comparison


def judge(result: OutputComparison, tolerance: Tolerance) -> list[str]:
    """Why `result` misses `tolerance` (empty when it passes)."""
    reasons = []
    if result.nonfinite:
        reasons.append(f"{result.nan} NaN and {result.nonfinite - result.nan} Inf values")
    if result.reference_nonfinite:
        reasons.append(f"the reference itself has {result.reference_nonfinite} non-finite values")
    if not result.rel_l2 <= tolerance.max_rel_l2:
        reasons.append(f"rel L2 {result.rel_l2:.3g} > {tolerance.max_rel_l2:g}")
    if tolerance.max_abs is not None and not result.max_abs <= tolerance.max_abs:
        reasons.append(f"max abs {result.max_abs:.3g} > {tolerance.max_abs:g}")
    agreement = result.agreement
    if (
        tolerance.min_agreement is not None
        and agreement is not None
        and not agreement >= tolerance.min_agreement
    ):
        reasons.append(f"argmax agreement {agreement:.4%} < {tolerance.min_agreement:.2%}")
    return reasons


def _accumulate(total: np.ndarray | None, matrix: np.ndarray) -> np.ndarray:
    return matrix if total is None else total + matrix


def _class_names(count: int) -> list[str]:
    return [str(i) for i in range(count)]


def _at_resolution(truth: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """Ground truth at the prediction's resolution (every k-th label for 1/k outputs)."""
    if truth.shape == shape:
        return truth
    if truth.ndim != len(shape) or truth.shape[0] != shape[0]:
        return None
    steps = [big // small for big, small in zip(truth.shape[1:], shape[1:], strict=True)]
    if any(
        step < 1 or step * small != big
        for step, small, big in zip(steps, shape[1:], truth.shape[1:], strict=True)
    ):
        return None
    return truth[(slice(None), *(slice(None, None, step) for step in steps))]


def compare_arrays(
    name: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: Tolerance,
    labels: bool,
) -> OutputComparison:
    """Error figures of one output; `labels` adds argmax agreement for logits."""
    stats = OutputStats(name, labels and reference.ndim >= 2)
    stats.add(reference, candidate)
    return stats.result(tolerance)


def reference_model(manifest: dict[str, Any], weights: str | Path | None = None) -> nn.Module:
    """The PyTorch model an artifact was exported from, rebuilt from its manifest.

    The checkpoint is the path the manifest records, or `weights` (a path or `demo`) when
    the artifact moved to another machine; either way its sha256 must be the recorded one.
    """
    info = manifest["model"]
    recorded = info.get("weights")
    if not recorded:
        raise SegexportError(
            f"{info['name']} was exported with random weights: its PyTorch reference cannot be rebuilt; "
            "export with --weights CKPT (or --weights demo)"
        )
    path = Path(recorded["path"]) if weights is None else resolve_weights(info["name"], weights).path
    if not path.is_file() or sha256_file(path) != recorded["sha256"]:
        raise SegexportError(f"{path}: the checkpoint this artifact was exported from is missing or changed")
    model = create_model(info["name"], num_classes=info["num_classes"], **info.get("options", {}))
    load_weights(model, path)
    return model.eval()


def data_size(manifest: dict[str, Any]) -> tuple[int, int]:
    """The image size to check an artifact at: its checkpoint's training size, else its export size."""
    trained = manifest["model"].get("trained") or {}
    if "input_size" in trained:
        height, width = trained["input_size"]
        return int(height), int(width)
    _, height, width = (int(v) for v in manifest["export_shape"].split("x"))
    return height, width


class TorchRunner:
    """The PyTorch reference as a Runner; outputs are flattened in the spec's order."""

    def __init__(self, model: nn.Module, output_names: Sequence[str], threads: int | None = None):
        self.model = model.eval()
        self._output_names = list(output_names)
        self.threads = threads
        self.name = f"pytorch:{type(model).__name__}"

    @property
    def output_names(self) -> list[str]:
        return self._output_names

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                result = self.model(*(torch.from_numpy(v) for v in feeds.values()))
        finally:
            torch.set_num_threads(previous)
        outputs = flatten_outputs(result)
        return {n: o.numpy() for n, o in zip(self._output_names, outputs, strict=True)}


def flatten_outputs(result: Any) -> tuple[torch.Tensor, ...]:
    """A model's return value (tensor, tuple/list, dict) as a flat tuple of tensors."""
    if isinstance(result, torch.Tensor):
        return (result,)
    if isinstance(result, dict):
        result = list(result.values())
    flat: list[torch.Tensor] = []
    for item in result:
        flat.extend(flatten_outputs(item))
    return tuple(flat)


def verify_runners(
    spec: ModelSpec,
    num_classes: int,
    reference: Runner,
    candidate: Runner,
    shapes: Sequence[InputShape],
    tolerance: Tolerance,
    progress: Callable[[str], None] | None = None,
    seed: int = 0,
) -> VerificationReport:
    """Run both runners on the same seeded random inputs at every shape and compare."""
    results = []
    generator = torch.Generator().manual_seed(seed)
    for shape in shapes:
        if progress:
            progress(f"verifying at {shape}")
        feeds = {
            name: tensor.numpy()
            for name, tensor in spec.example_inputs(shape, num_classes, generator).items()
        }
        expected = reference.infer(feeds)
        try:
            actual = candidate.infer(feeds)
        except Exception as error:  # the candidate runtime's own error types
            results.append(ShapeResult(str(shape), False, error=first_line(error)))
            continue
        outputs = [
            compare_arrays(name, expected[name], actual[name], tolerance, name in spec.logits_outputs)
            for name in reference.output_names
        ]
        results.append(ShapeResult(str(shape), all(o.passed for o in outputs), outputs))
    return VerificationReport(reference.name, candidate.name, tolerance, results)


# --------------------------------------------------------------------------- the verify stage

PRECISIONS = ("fp32", "fp16", "int8", "engine")
AGAINST = ("pytorch", "onnx")
NO_TENSORRT = "TensorRT is not importable on this machine"
REPORT_NAME = "verify_report.md"
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


@dataclass
class WorstImage:
    """The image with the lowest argmax agreement, kept to draw and to localise on."""

    index: int
    agreement: float
    image: np.ndarray = field(repr=False)  # the preprocessed input [1, 3, H, W]
    reference: np.ndarray = field(repr=False)  # label maps [H', W']
    candidate: np.ndarray = field(repr=False)
    png: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "agreement": self.agreement, "png": self.png}


@dataclass
class ArtifactResult:
    file: str
    precision: str
    status: str  # passed | failed | skipped
    tolerance: Tolerance | None = None
    runner: str | None = None
    reason: str | None = None  # why it was skipped, or the error that stopped it
    outputs: list[OutputComparison] = field(default_factory=list)  # over the whole data set
    shapes: list[ShapeResult] = field(default_factory=list)  # --shapes, random inputs
    worst: WorstImage | None = None
    localization: Localization | None = None  # when it failed and could be localised
    seconds: float = 0.0

    def failures(self) -> list[str]:
        lines = [] if self.reason is None or self.status == "skipped" else [self.reason]
        lines += [f"output {o.name}: {'; '.join(o.reasons)}" for o in self.outputs if not o.passed]
        lines += [
            f"shape {shape.shape}: {shape.error or 'outside the tolerance'}"
            for shape in self.shapes
            if not shape.passed
        ]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "precision": self.precision,
            "status": self.status,
            "reason": self.reason,
            "runner": self.runner,
            "tolerance": None if self.tolerance is None else asdict(self.tolerance),
            "outputs": [asdict(o) for o in self.outputs],
            "shapes": [asdict(s) for s in self.shapes],
            "worst_image": None if self.worst is None else self.worst.to_dict(),
            "localization": None if self.localization is None else self.localization.to_dict(),
            "failures": self.failures(),
            "seconds": round(self.seconds, 2),
        }


@dataclass
class ParityReport:
    model: str
    directory: Path
    against: str
    reference: str
    data: dict[str, Any]
    artifacts: list[ArtifactResult]
    preprocessing: dict[str, Any]
    seconds: float = 0.0
    files: dict[str, Any] = field(default_factory=dict)  # the reports written

    @property
    def passed(self) -> bool:
        return all(a.status != "failed" for a in self.artifacts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.passed,
            "model": self.model,
            "artifacts_dir": str(self.directory),
            "against": self.against,
            "reference": self.reference,
            "data": self.data,
            "seconds": round(self.seconds, 2),
            "artifacts": [a.to_dict() for a in self.artifacts],
            "reports": self.files,
        }


@dataclass
class _Batch:
    first: int
    inputs: np.ndarray  # [B, 3, H, W] float32
    truth: np.ndarray | None  # [B, H, W] labels


def artifact_precision(file_name: str) -> str | None:
    """fp32/fp16/int8 for ONNX files (by their `model.<precision>.onnx` tag), engine, or None."""
    path = Path(file_name)
    if path.suffix == ".engine":
        return "engine"
    if path.suffix != ".onnx":
        return None
    tags = path.name.split(".")[1:-1]  # model.int8.onnx, model.int8-cpu.onnx (a variant of int8)
    return next((p for p in ("fp16", "int8") if any(t.split("-")[0] == p for t in tags)), "fp32")


def default_tolerance(file_name: str) -> Tolerance:
    """DEFAULT_TOLERANCES for the file's precision; engines take the precision their name
    names (`model.int8.engine`), else FP16's."""
    precision = artifact_precision(file_name) or "fp32"
    if precision == "engine":
        tags = set(Path(file_name).name.split(".")[1:-1])
        precision = next((p for p in ("fp32", "fp16", "int8") if p in tags), "fp16")
    return DEFAULT_TOLERANCES[precision]


def verify_artifacts(request: VerifyRequest, progress: Callable[[str], None] | None = None) -> ParityReport:
    """Check every selected artifact against the reference on real data; write the reports.

    Returns the report; `passed` is False when any artifact failed (the CLI exits 1).
    User mistakes (bad options, unvouched files) raise SegexportError before any work.
    """
    from segexport.export import artifact_directory  # export and report import this module
    from segexport.report import write_reports

    say = progress or (lambda _message: None)
    started = time.perf_counter()
    _check_request(request)
    directory = artifact_directory(request.artifacts, request.model, request.weights, say)
    manifest = read_manifest(directory)
    spec = get_spec(manifest["model"]["name"])
    if spec.input_kind != "image":
        raise SegexportError(f"{spec.name}: verify handles image models")
    selected, skipped = _select(directory, manifest, request)
    for result in selected:  # checksums first: nothing runs unless every file is vouched for
        vouched_path(directory, result.file, manifest)
    if request.against == "onnx":
        vouched_path(directory, "model.onnx", manifest)
    shapes = _check_shapes(request.shapes or [], manifest, spec)
    reference = _reference_runner(request, directory, manifest, spec.output_names)
    say(f"reference: {reference.name}")
    runners = _open_candidates(selected, directory, manifest, request)
    data = _DataSource(request, manifest, data_size(manifest))
    _run_data(data, reference, runners, selected, spec.logits_outputs, say)
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
    report.seconds = time.perf_counter() - started
    write_reports(report, request.report or directory / REPORT_NAME)
    return report


def _check_request(request: VerifyRequest) -> None:
    if request.against not in AGAINST:
        raise SegexportError(f"--against {request.against!r}: use one of {', '.join(AGAINST)}")
    if request.precision != "all" and request.precision not in PRECISIONS:
        raise SegexportError(f"--precision {request.precision!r}: use all or one of {', '.join(PRECISIONS)}")
    if request.limit < 1:
        raise SegexportError(f"--limit must be >= 1, got {request.limit}")
    if request.report is not None and request.report.suffix != ".md":
        raise SegexportError(f"--report {request.report}: name a .md file (the .json and .png go beside it)")


def _select(
    directory: Path, manifest: dict[str, Any], request: VerifyRequest
) -> tuple[list[ArtifactResult], list[ArtifactResult]]:
    """The manifest's model files of the wanted precision, and unlisted model files (refused)."""
    wanted = request.precision
    listed = sorted(
        (name for name in manifest["files"] if artifact_precision(name)),
        key=lambda name: (PRECISIONS.index(str(artifact_precision(name))), name),
    )
    selected = []
    for name in listed:
        precision = artifact_precision(name)
        assert precision is not None
        if wanted not in ("all", precision):
            continue
        tolerance = default_tolerance(name).override(request.rtol, request.min_agreement, request.atol)
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
        if path.is_file() and artifact_precision(path.name) and path.name not in manifest["files"]
    )
    skipped = [
        ArtifactResult(
            name, str(artifact_precision(name)), "skipped", reason="not listed in manifest.json; refused"
        )
        for name in unlisted
    ]
    return selected, skipped


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
        return open_runner(directory, "model.onnx", manifest, request.threads)
    return TorchRunner(reference_model(manifest, request.weights), output_names, request.threads)


def _open_candidates(
    selected: list[ArtifactResult], directory: Path, manifest: dict[str, Any], request: VerifyRequest
) -> dict[str, Runner]:
    runners = {}
    for result in selected:
        if result.status == "skipped":
            continue
        if request.against == "onnx" and result.file == "model.onnx":
            result.status, result.reason = "skipped", "the reference itself (--against onnx)"
            continue
        runners[result.file] = open_runner(directory, result.file, manifest, request.threads)
        result.runner = runners[result.file].name
    return runners


class _DataSource:
    """Preprocessed images in batches, with ground truth when the data has it."""

    def __init__(self, request: VerifyRequest, manifest: dict[str, Any], size: tuple[int, int]) -> None:
        self.source, self.size = request.data, size
        self.prep = manifest["preprocessing"]
        self.max_batch = int(manifest["dynamic_axes"]["batch"][1])
        classes = list(manifest["model"]["class_names"])
        self.note: str | None = None
        self.images: Any = None  # index -> RGB uint8, or (RGB, labels) when labelled
        self.labelled = False
        if request.data == "random":
            self.count = request.limit
            return
        root = Path(request.data)
        if request.data == "synthetic":
            self.images = SyntheticScenes("eval", request.limit, size)
            self.labelled = classes == list(SYNTHETIC_CLASSES)
            if not self.labelled:
                self.note = "no ground truth: the model's classes are not the synthetic scenes'"
        elif (root / "masks").is_dir() or (root / "classes.txt").is_file():
            self.images = open_dataset(request.data, "eval", request.limit, size)
            if len(self.images.class_names) != len(classes):
                raise SegexportError(
                    f"{root}: classes.txt names {len(self.images.class_names)} classes; "
                    f"the model has {len(classes)}"
                )
            self.labelled = True
        elif root.is_dir():
            self.images = ImageFolder.from_dir(root / "images" if (root / "images").is_dir() else root)
            self.note = "no ground truth: the folder has images only"
        else:
            raise SegexportError(f"--data {request.data!r} is neither synthetic, random nor a directory")
        self.count = min(request.limit, len(self.images))

    def batches(self, batch_size: int) -> Iterator[_Batch]:
        rng = np.random.default_rng(0)
        for first in range(0, self.count, batch_size):
            indices = range(first, min(first + batch_size, self.count))
            if self.images is None:
                shape = (len(indices), 3, *self.size)
                yield _Batch(first, rng.normal(size=shape).astype(np.float32), None)
                continue
            items = [self.images[i] for i in indices]
            pictures = [item[0] if isinstance(item, tuple) else item for item in items]
            rgb = np.stack([resize(picture, self.size) for picture in pictures])
            truth = None
            if self.labelled:
                truth = np.stack([resize(item[1], self.size, labels=True) for item in items])
            inputs = preprocess(rgb, self.prep["mean"], self.prep["std"], self.prep["scale"])
            yield _Batch(first, inputs, truth)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "images": self.count,
            "size": list(self.size),
            "labels": self.labelled,
            "note": self.note,
        }


def _run_data(
    data: _DataSource,
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
    for batch in data.batches(_batch_size(data, reference)):
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


def _batch_size(data: _DataSource, reference: Runner) -> int:
    """Images per run: 8, fewer when one image's outputs are large or the artifact's batch is."""
    probe = reference.infer({"image": np.zeros((1, 3, *data.size), dtype=np.float32)})
    values = max(sum(int(v.size) for v in probe.values()), 1)
    return max(1, min(8, data.max_batch, _BATCH_VALUES // values))


def _track_worst(
    result: ArtifactResult, batch: _Batch, agreement: np.ndarray, expected: np.ndarray, actual: np.ndarray
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
    data: _DataSource,
    say: Callable[[str], None],
) -> Localization | None:
    """Name the first node where a failing ONNX artifact's error jumps (None for engines)."""
    from segexport.export import retrace
    from segexport.localize import Localization, localize, module_scopes

    if not result.file.endswith(".onnx") or result.worst is None or result.tolerance is None:
        return None
    feeds = [{"image": result.worst.image}]  # a few images suffice: the worst, and the first
    if result.worst.index != 0:
        feeds.append({"image": next(data.batches(1)).inputs})
    scopes = None
    try:
        if result.precision == "fp32":
            if not isinstance(reference, TorchRunner):
                return None
            say(f"{result.file}: localising against a fresh FP32 export of the PyTorch model")
            raw, graph = retrace(manifest, reference.model)
            scopes, label = module_scopes(raw), "a fresh FP32 export of the PyTorch model"
        else:
            say(f"{result.file}: localising against model.onnx (FP32)")
            label = "model.onnx (FP32)"
            graph = onnx.load(str(vouched_path(directory, "model.onnx", manifest)))
        candidate = onnx.load(str(vouched_path(directory, result.file, manifest)))
        with tempfile.TemporaryDirectory(prefix="segexport-localize-") as workdir:
            return localize(
                graph, candidate, feeds, result.tolerance, Path(workdir), label, scopes, request.threads
            )
    except SegexportError as error:
        return Localization("", len(feeds), 0, None, [], f"not localised: {error}")
