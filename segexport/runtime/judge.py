"""Any runner against the PyTorch reference recorded at export, without PyTorch.

numpy only: the same comparator (`segexport.runtime.compare`) and per-precision bounds as
`segexport verify`, on the inputs and outputs in reference.npz. Agreement and mIoU are
those of PyTorch's own FP32 outputs, so the figures equal a PyTorch rerun's on the same
images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segexport.errors import first_line
from segexport.runtime.compare import (
    OutputComparison,
    OutputStats,
    ShapeResult,
    Tolerance,
    VerificationReport,
    compare_arrays,
)
from segexport.runtime.preprocessing import input_shape, preprocess_for
from segexport.runtime.recorded import RecordedReference, RecordedSet
from segexport.runtime.runners import Runner

# Said wherever a judgement used the recorded reference instead of rerunning PyTorch.
NOT_RERUN = "judged against the PyTorch outputs recorded at export (reference.npz); PyTorch was not rerun"


@dataclass
class Judgement:
    """A runner's figures on the recorded images (`outputs`) and at the check shapes (`shapes`)."""

    runner: str
    outputs: list[OutputComparison] = field(default_factory=list)
    shapes: list[ShapeResult] = field(default_factory=list)
    error: str | None = None
    images: int = 0

    @property
    def passed(self) -> bool:
        return (
            self.error is None and all(o.passed for o in self.outputs) and all(s.passed for s in self.shapes)
        )

    def failures(self) -> list[str]:
        """One line per failing output or shape, for error messages."""
        lines = [f"the runtime failed: {self.error}"] if self.error else []
        lines += [f"output {o.name}: {'; '.join(o.reasons)}" for o in self.outputs if not o.passed]
        for result in self.shapes:
            if result.error:
                lines.append(f"shape {result.shape}: {result.error}")
            lines += [
                f"shape {result.shape}, output {o.name}: {'; '.join(o.reasons)}"
                for o in result.outputs
                if not o.passed
            ]
        return lines

    def to_dict(self) -> dict[str, Any]:
        """The summary an engine record keeps: figures of the label output, and the verdict."""
        out = self.label_output()
        return {
            "against": NOT_RERUN,
            "passed": self.passed,
            "images": self.images,
            "agreement": None if out is None else out.agreement,
            "rel_l2": None if out is None else out.rel_l2,
            "miou": None if out is None else out.miou,
            "miou_pytorch_fp32": None if out is None else out.miou_reference,
            "shapes": [result.shape for result in self.shapes],
            "failures": self.failures(),
        }

    def label_output(self) -> OutputComparison | None:
        """The first output judged by labels (agreement, mIoU), else the first output."""
        labelled = [o for o in self.outputs if o.agreement is not None] or self.outputs
        return labelled[0] if labelled else None


def _feeds(reference: RecordedReference, images: np.ndarray) -> dict[str, np.ndarray]:
    return {"image": preprocess_for(reference.preprocessing, images)}


def judge_runner(
    reference: RecordedReference,
    runner: Runner,
    tolerance: Tolerance,
    max_batch: int = 8,
    fits: Callable[[tuple[int, ...]], bool] | None = None,
) -> Judgement:
    """`runner` on every recorded set, compared with PyTorch's recorded outputs.

    `max_batch` splits the image set to what the runner takes; `fits` skips sets whose
    shape is outside an engine's profile (None: every set).
    """
    judgement = Judgement(runner.name)
    try:
        for recorded in reference.sets:
            shape = input_shape(reference.preprocessing, len(recorded.images), recorded.images.shape[1:3])
            if recorded.kind == "images" and (fits is None or fits((1, *shape[1:]))):
                judgement.outputs = _judge_images(reference, recorded, runner, tolerance, max(1, max_batch))
                judgement.images = len(recorded.images)
            elif recorded.kind == "shape" and (fits is None or fits(shape)):
                judgement.shapes.append(_judge_shape(reference, recorded, runner, tolerance))
    except Exception as error:  # the runtime's own error types
        judgement.error = first_line(error)
    return judgement


def _judge_images(
    reference: RecordedReference, recorded: RecordedSet, runner: Runner, tolerance: Tolerance, batch: int
) -> list[OutputComparison]:
    names = reference.output_names
    stats = [OutputStats(name, name in reference.label_outputs) for name in names]
    for first in range(0, len(recorded.images), batch):
        chunk = slice(first, first + batch)
        actual = runner.infer(_feeds(reference, recorded.images[chunk]))
        truth = None if recorded.truth is None else recorded.truth[chunk].astype(np.int64)
        for name, output in zip(names, stats, strict=True):
            output.add(recorded.outputs[name][chunk], actual[name], truth)
    return [output.result(tolerance) for output in stats]


def _judge_shape(
    reference: RecordedReference, recorded: RecordedSet, runner: Runner, tolerance: Tolerance
) -> ShapeResult:
    try:
        actual = runner.infer(_feeds(reference, recorded.images))
    except Exception as error:  # the runtime's own error types
        return ShapeResult(recorded.shape, False, error=first_line(error))
    outputs = [
        compare_arrays(name, recorded.outputs[name], actual[name], tolerance, name in reference.label_outputs)
        for name in reference.output_names
    ]
    return ShapeResult(recorded.shape, all(o.passed for o in outputs), outputs)


def compare_on_feeds(
    reference: Runner,
    candidate: Runner,
    cases: Iterable[tuple[str, dict[str, np.ndarray]]],
    tolerance: Tolerance,
    label_outputs: Sequence[str],
    progress: Callable[[str], None] | None = None,
) -> VerificationReport:
    """Both runners on the same feeds, one ShapeResult per (label, feeds) case."""
    results = []
    for label, feeds in cases:
        if progress:
            progress(f"verifying at {label}")
        expected = reference.infer(feeds)
        try:
            actual = candidate.infer(feeds)
        except Exception as error:  # the candidate runtime's own error types
            results.append(ShapeResult(label, False, error=first_line(error)))
            continue
        outputs = [
            compare_arrays(name, expected[name], actual[name], tolerance, name in label_outputs)
            for name in reference.output_names
        ]
        results.append(ShapeResult(label, all(o.passed for o in outputs), outputs))
    return VerificationReport(reference.name, candidate.name, tolerance, results)
