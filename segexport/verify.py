"""Parity between an artifact and the PyTorch model it came from.

One comparator (`compare_arrays`) with tolerances, and `verify_runners`, which feeds the
same random inputs of several shapes to a reference runner and a candidate runner. A
shape the candidate cannot run at all (a size baked into the graph) is a failure with
the runtime's message, not a crash: that is how dynamic axes that only look dynamic
are caught.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from segexport.runtime import Runner
from segexport.shapes import InputShape
from segexport.zoo.registry import ModelSpec


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria for one precision. FP32 export: relative L2 <= 1e-4."""

    max_rel_l2: float = 1e-4
    min_agreement: float | None = None


@dataclass
class OutputComparison:
    name: str
    shape: list[int]
    max_abs: float
    mean_abs: float
    rel_l2: float
    agreement: float | None
    nonfinite: int
    passed: bool


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
                    lines.append(
                        f"shape {result.shape}, output {out.name}: rel L2 {out.rel_l2:.2e} "
                        f"(max {self.tolerance.max_rel_l2:.0e}), max abs {out.max_abs:.2e}"
                        + (f", {out.nonfinite} non-finite values" if out.nonfinite else "")
                    )
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, **asdict(self)}


def label_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of positions whose predicted label matches.

    Many-channel outputs are class logits (argmax over axis 1); single-channel outputs
    are binary mask logits (sign).
    """
    if reference.shape[1] == 1:
        return float(np.mean((reference > 0) == (candidate > 0)))
    return float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))


def compare_arrays(
    name: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: Tolerance,
    labels: bool,
) -> OutputComparison:
    """Error figures of one output; `labels` adds argmax agreement for logits."""
    shape = list(candidate.shape)
    if reference.shape != candidate.shape:
        return OutputComparison(name, shape, math.inf, math.inf, math.inf, None, 0, False)
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    nonfinite = int(np.size(cand) - np.count_nonzero(np.isfinite(cand)))
    diff = np.abs(ref - cand)
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    rel_l2 = float(np.linalg.norm(ref - cand) / max(float(np.linalg.norm(ref)), 1e-12))
    agreement = label_agreement(reference, candidate) if labels and ref.ndim >= 2 else None
    passed = nonfinite == 0 and math.isfinite(rel_l2) and rel_l2 <= tolerance.max_rel_l2
    if tolerance.min_agreement is not None and agreement is not None:
        passed = passed and agreement >= tolerance.min_agreement
    return OutputComparison(name, shape, max_abs, mean_abs, rel_l2, agreement, nonfinite, passed)


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
            message = str(error).strip().splitlines()
            results.append(ShapeResult(str(shape), False, error=message[0] if message else repr(error)))
            continue
        outputs = [
            compare_arrays(name, expected[name], actual[name], tolerance, name in spec.logits_outputs)
            for name in reference.output_names
        ]
        results.append(ShapeResult(str(shape), all(o.passed for o in outputs), outputs))
    return VerificationReport(reference.name, candidate.name, tolerance, results)
