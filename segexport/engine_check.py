"""What `segexport trt` checks on a freshly built engine, without PyTorch.

Against its source ONNX through ONNX Runtime (seeded random inputs over the profile: what
differs is TensorRT's kernels), against the PyTorch outputs recorded at export
(reference.npz, judged by `segexport.runtime.judge` with verify's bounds), and the
precision the engine actually delivers, read from its layers with TensorRT's engine
inspector: an "FP16" build in which no layer runs in FP16 is refused.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segexport.compare import DEFAULT_TOLERANCES, Tolerance, VerificationReport
from segexport.errors import SegexportError
from segexport.runtime import OnnxRuntimeRunner
from segexport.runtime.engine import TensorRTRunner
from segexport.runtime.engine_records import profile_problem
from segexport.runtime.files import engine_file_name
from segexport.runtime.judge import Judgement, compare_on_feeds, judge_runner
from segexport.runtime.recorded import RecordedReference
from segexport.shapes import InputShape

Progress = Callable[[str], None]
Profile = dict[str, dict[str, list[int]]]

# Engine vs its own source ONNX on ONNX Runtime (same graph, same precision, seeded random
# inputs): what is left is TensorRT's kernels and fusions. FP32 allows for TF32, which
# TensorRT enables by default; INT8 for requantisation rounding in fused kernels. Argmax
# agreement is not gated on random inputs (near-ties); the recorded reference judges it on data.
# Not yet measured on a device: revisit with the first real builds.
ENGINE_TOLERANCE = {
    "fp32": Tolerance(max_rel_l2=1e-2),
    "fp16": Tolerance(max_rel_l2=2e-2),
    "int8": Tolerance(max_rel_l2=1e-1),
}
# The inspector's `Format/Datatype` text of a layer's output, to the precision it runs in.
_PRECISION_WORDS = (
    ("int8", re.compile(r"\bint8\b", re.IGNORECASE)),
    ("fp16", re.compile(r"\b(fp16|half)\b", re.IGNORECASE)),
    ("fp32", re.compile(r"\b(fp32|float|tf32)\b", re.IGNORECASE)),
)


def profile_check_shapes(profile: Profile) -> list[InputShape]:
    """The profile's min and opt shapes, and batch 2 at the opt size when the range allows."""
    first = next(iter(profile.values()))
    shapes = []
    for key in ("min", "opt"):
        dims = first[key]
        shapes.append(InputShape(dims[0], dims[2], dims[3]) if len(dims) == 4 else InputShape(dims[0]))
    opt = shapes[1]
    if first["max"][0] >= 2 and opt.batch < 2:
        shapes.append(InputShape(2, opt.height, opt.width))
    return list(dict.fromkeys(shapes))


@dataclass
class EngineCheck:
    """The engine against its source ONNX and, when the weights are trained, against the
    PyTorch outputs recorded at export."""

    vs_onnx: VerificationReport
    vs_reference: Judgement | None

    @property
    def passed(self) -> bool:
        return self.vs_onnx.passed and (self.vs_reference is None or self.vs_reference.passed)

    def failures(self) -> list[str]:
        lines = self.vs_onnx.failures()
        if self.vs_reference is not None:
            lines += [f"against recorded PyTorch: {line}" for line in self.vs_reference.failures()]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "vs_onnx": self.vs_onnx.to_dict(),
            "vs_pytorch": None if self.vs_reference is None else self.vs_reference.to_dict(),
        }


def _random_image_cases(profile: Profile) -> list[tuple[str, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    cases = []
    for shape in profile_check_shapes(profile):
        assert shape.height is not None and shape.width is not None
        dims = (shape.batch, 3, shape.height, shape.width)
        cases.append((str(shape), {"image": rng.normal(size=dims).astype(np.float32)}))
    return cases


def check_engine(
    plan: bytes,
    record: dict[str, Any],
    source: Path,
    reference: RecordedReference | None,
    profile: Profile,
    threads: int | None,
    say: Progress,
) -> EngineCheck:
    """Run the freshly built engine against its source ONNX and the recorded reference."""
    precision = record["precision"]
    engine = TensorRTRunner(plan, record, name=f"tensorrt:{engine_file_name(precision)}")
    try:
        say("checking the engine against ONNX Runtime on its source ONNX")
        labels = [] if reference is None else reference.label_outputs
        vs_onnx = compare_on_feeds(
            OnnxRuntimeRunner(source, threads=threads),
            engine,
            _random_image_cases(profile),
            ENGINE_TOLERANCE[precision],
            labels,
            progress=lambda message: say(f"  {message}"),
        )
        vs_reference = None
        if reference is not None:
            say("checking the engine against the PyTorch outputs recorded at export (reference.npz)")

            def fits(shape: tuple[int, ...]) -> bool:
                return profile_problem(record, {"image": shape}) is None

            batch = int(record["profile"]["image"]["max"][0])
            vs_reference = judge_runner(reference, engine, DEFAULT_TOLERANCES[precision], batch, fits)
    finally:
        engine.close()
    return EngineCheck(vs_onnx, vs_reference)


def layer_precision(layer: dict[str, Any]) -> str:
    """fp32/fp16/int8 from a DETAILED inspector layer's outputs' formats; `other` if none says."""
    texts = [str(out.get("Format/Datatype", "")) for out in layer.get("Outputs", []) if isinstance(out, dict)]
    for precision, pattern in _PRECISION_WORDS:
        if any(pattern.search(text) for text in texts):
            return precision
    return "other"


def delivered_precisions(information: str) -> dict[str, Any]:
    """The engine inspector's JSON (ProfilingVerbosity.DETAILED) as a per-layer record."""
    try:
        layers = json.loads(information).get("Layers", [])
    except (ValueError, AttributeError):
        layers = []
    per_layer = [
        {
            "name": str(layer.get("Name", "")),
            "type": str(layer.get("LayerType", "")),
            "precision": layer_precision(layer),
        }
        for layer in layers
        if isinstance(layer, dict)
    ]
    counts = Counter(entry["precision"] for entry in per_layer)
    return {"layers": len(per_layer), "precisions": dict(sorted(counts.items())), "per_layer": per_layer}


def precision_contradiction(requested: str, delivered: dict[str, Any]) -> str | None:
    """Why the delivered layers contradict the requested precision (None when they don't).

    An FP16 build must run some layer in FP16 (or INT8), an INT8 build some layer in INT8;
    FP32 builds may run TF32 and are not checked. No readable layers is a contradiction too:
    an engine whose precision cannot be shown is not labelled.
    """
    if requested == "fp32":
        return None
    counts = delivered["precisions"]
    if not delivered["layers"]:
        return f"the engine inspector listed no layers: its {requested.upper()} precision cannot be shown"
    wanted = ("fp16", "int8") if requested == "fp16" else ("int8",)
    if not any(counts.get(p) for p in wanted):
        described = ", ".join(f"{n} {p.upper()}" for p, n in counts.items())
        return f"built as {requested.upper()} but no layer runs in {requested.upper()} ({described})"
    return None


def refuse_contradiction(name: str, requested: str, delivered: dict[str, Any]) -> None:
    problem = precision_contradiction(requested, delivered)
    if problem is not None:
        raise SegexportError(f"{name}: {problem}; no engine written")
