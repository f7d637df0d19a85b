"""The comparator, as the toolchain imports it: re-exported from `segexport.runtime.compare`.

It moved into the runtime (numpy only) so that a device without PyTorch judges a runner
against the recorded reference (`segexport.runtime.judge`) with the same figures and
bounds; this module keeps the toolchain's imports working with one implementation.
"""

from __future__ import annotations

from segexport.runtime.compare import (
    DEFAULT_TOLERANCES,
    OutputComparison,
    OutputStats,
    ShapeResult,
    Tolerance,
    VerificationReport,
    compare_arrays,
    default_tolerance,
    judge,
    label_agreement,
    predicted_labels,
)

__all__ = [
    "DEFAULT_TOLERANCES",
    "OutputComparison",
    "OutputStats",
    "ShapeResult",
    "Tolerance",
    "VerificationReport",
    "compare_arrays",
    "default_tolerance",
    "judge",
    "label_agreement",
    "predicted_labels",
]
