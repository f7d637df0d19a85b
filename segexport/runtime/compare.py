"""The comparator every stage judges with: tolerances, output statistics, verdicts.

numpy only, in the runtime half so that `segexport.runtime.judge` uses it without PyTorch.
Export, quantize, build, verify and bench compare a candidate with a reference through the
same `OutputStats` and `judge`, so a figure means the same thing in every report, and
`DEFAULT_TOLERANCES` are the one set of per-precision bounds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segexport.runtime.files import judged_precision
from segexport.runtime.metrics import confusion_matrix, iou_report


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
    ids: bool = False  # a mask of class ids: judged by agreement only (error norms mean nothing)


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
        self.ids = False
        self.equal = 0

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
        if np.issubdtype(reference.dtype, np.integer) and np.issubdtype(candidate.dtype, np.integer):
            # A mask head's class ids (`segexport onnx --head mask`): the labels themselves.
            self.ids = True
            same = reference.astype(np.int64) == candidate.astype(np.int64)
            self.equal += int(same.sum())
            self.count += same.size
            return np.mean(same.reshape(len(same), -1), axis=1)
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
        if self.ids and not self.mismatch:
            share = self.equal / max(self.count, 1)
            comparison = OutputComparison(
                self.name, shape, math.nan, math.nan, math.nan, share, 0, True, ids=True
            )
            comparison.reasons = judge(comparison, tolerance)
            comparison.passed = not comparison.reasons
            return comparison
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
    if not result.ids and not result.rel_l2 <= tolerance.max_rel_l2:
        reasons.append(f"rel L2 {result.rel_l2:.3g} > {tolerance.max_rel_l2:g}")
    if not result.ids and tolerance.max_abs is not None and not result.max_abs <= tolerance.max_abs:
        reasons.append(f"max abs {result.max_abs:.3g} > {tolerance.max_abs:g}")
    agreement = result.agreement
    if result.ids and tolerance.min_agreement is None:
        # Class ids have no error norm to bound: without an agreement bound they take FP32's.
        tolerance = DEFAULT_TOLERANCES["fp32"]
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
    stats = OutputStats(name, labels and reference.ndim >= 2)  # integer outputs: ids, see `add`
    stats.add(reference, candidate)
    return stats.result(tolerance)


def default_tolerance(file_name: str) -> Tolerance:
    """DEFAULT_TOLERANCES for the file's precision; engines take the precision their name
    names (`model.int8.engine`), else FP16's."""
    precision = judged_precision(file_name) or "fp32"
    if precision == "engine":
        tags = set(Path(file_name).name.split(".")[1:-1])
        precision = next((p for p in ("fp32", "fp16", "int8") if p in tags), "fp16")
    return DEFAULT_TOLERANCES[precision]
