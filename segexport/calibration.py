"""INT8 calibration: activation ranges from ONNX Runtime's calibrators, tied to their graph.

ONNX Runtime's histogram calibrators (percentile, entropy) give each tensor 2048 equal
bins; a tensor whose values span less than 2048 float32 steps (a constant or nearly
constant activation: a squeeze-excite gate of random weights, a padding mask) cannot be
binned and numpy raises "Too many bins for data range" for the whole model. Such a tensor
takes its min/max range instead (all its values are representable then), and the
calibration records which tensors did.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segexport.errors import SegexportError
from segexport.runtime.jsonfile import Fields, read_json

NARROW_RANGE = "Too many bins for data range"  # numpy's message for a range it cannot bin


@dataclass(frozen=True)
class Calibration:
    """Activation ranges keyed by tensor name, tied to the FP32 graph they came from."""

    method: str
    ranges: dict[str, tuple[float, float]]
    graph_sha256: str
    images: int
    percentile: float | None = None
    # tensors whose range was too narrow to bin: they took min/max instead of `method`
    minmax_fallback: tuple[str, ...] = ()

    def save(self, path: Path) -> None:
        data = {
            "graph_sha256": self.graph_sha256,
            "method": self.method,
            "percentile": self.percentile,
            "images": self.images,
            "minmax_fallback": list(self.minmax_fallback),
            "ranges": {name: [low, high] for name, (low, high) in sorted(self.ranges.items())},
        }
        path.write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path, graph_sha256: str) -> Calibration:
        """A cache `save` wrote, every field typed; a bad one is one line, never a silent recalibration."""
        check = Fields(path)
        try:
            data = check.mapping(read_json(path, "calibration cache"), "(top level)")
            found = check.string(data.get("graph_sha256"), "graph_sha256")
        except SegexportError as error:
            raise SegexportError(
                f"{error}: not a calibration cache; drop --calib-cache to recalibrate"
            ) from None
        if found != graph_sha256:  # a stale cache is named as stale, whatever else it holds
            raise SegexportError(
                f"{path}: calibration cache is for another graph (sha256 {found[:12]}..., "
                f"this model.onnx is {graph_sha256[:12]}...); recalibrate without --calib-cache"
            )
        try:
            method, images = (
                check.string(data.get("method"), "method"),
                check.integer(data.get("images"), "images"),
            )
            percentile = data.get("percentile")
            percentile = None if percentile is None else check.number(percentile, "percentile", positive=True)
            listed = check.mapping(data.get("ranges"), "ranges")
            ranges = {name: check.interval(pair, f"ranges.{name}") for name, pair in listed.items()}
            if not ranges:
                raise check.fail("ranges", "is empty")
            listed_fallback = data.get("minmax_fallback", [])
            if not isinstance(listed_fallback, list) or not all(isinstance(n, str) for n in listed_fallback):
                raise check.fail("minmax_fallback", "is not a list of tensor names")
            fallback = tuple(listed_fallback)
        except SegexportError as error:
            redo = "delete it (or drop --calib-cache) to recalibrate"
            raise SegexportError(f"{error}: not a usable calibration cache; {redo}") from None
        return cls(method, ranges, graph_sha256, images, percentile, fallback)


class _NarrowRangeTolerant:
    """ONNX Runtime's histogram collector, fed one tensor at a time so that a tensor numpy
    cannot bin falls back to its min/max range instead of failing the whole calibration."""

    def __init__(self, collector: Any, symmetric: bool) -> None:
        self.collector = collector
        self.symmetric = symmetric
        self.fallback: dict[str, tuple[float, float]] = {}

    def collect(self, name_to_arr: dict[str, Any]) -> None:
        for name, arrays in name_to_arr.items():
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # it prints once per call
                    self.collector.collect({name: arrays})
            except ValueError as error:
                if NARROW_RANGE not in str(error):
                    raise
                values = [np.asarray(a) for a in (arrays if isinstance(arrays, list) else [arrays])]
                low = min(float(np.nanmin(v)) for v in values if v.size)
                high = max(float(np.nanmax(v)) for v in values if v.size)
                if name in self.fallback:
                    low, high = min(low, self.fallback[name][0]), max(high, self.fallback[name][1])
                self.fallback[name] = (low, high)

    def compute_collection_result(self) -> dict[str, Any]:
        from onnxruntime.quantization.calibrate import TensorData

        binned = {n for n in self.collector.histogram_dict if n not in self.fallback}
        self.collector.histogram_dict = {n: self.collector.histogram_dict[n] for n in binned}
        result = self.collector.compute_collection_result() if binned else {}
        for name, (low, high) in self.fallback.items():
            bound = max(abs(low), abs(high))  # as ONNX Runtime's symmetric minmax
            low, high = (-bound, bound) if self.symmetric else (low, high)
            result[name] = TensorData(lowest=np.float32(low), highest=np.float32(high))
        return dict(result)


def calibrate(
    model_path: Path,
    batches: Iterable[dict[str, np.ndarray]],
    method: str,
    graph_sha256: str,
    workdir: Path,
    percentile: float = 99.99,
) -> Calibration:
    """Collect activation ranges with ONNX Runtime's calibrators (minmax/entropy/percentile)."""
    from onnxruntime.quantization.calibrate import (
        CalibrationDataReader,
        CalibrationMethod,
        HistogramCollector,
        create_calibrator,
    )

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise SegexportError(f"--method {method!r}: use one of {', '.join(methods)}")
    feeds = list(batches)
    if not feeds:
        raise SegexportError("the calibration set is empty")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.pending = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.pending, None)

    extra: dict[str, object] = {"symmetric": True}
    if method == "percentile":
        extra["percentile"] = percentile
    calibrator = create_calibrator(
        model_path,
        augmented_model_path=str(workdir / "augmented.onnx"),
        calibrate_method=methods[method],
        extra_options=extra,
    )
    tolerant = None
    if method != "minmax":  # the histogram methods: wrap the collector they would create
        histogram = HistogramCollector(
            method=calibrator.method,
            symmetric=calibrator.symmetric,
            num_bins=calibrator.num_bins,
            num_quantized_bins=calibrator.num_quantized_bins,
            percentile=calibrator.percentile,
            scenario=calibrator.scenario,
        )
        tolerant = calibrator.collector = _NarrowRangeTolerant(histogram, calibrator.symmetric)
    with contextlib.redirect_stdout(sys.stderr):  # ORT's calibrators print; stdout is for --json
        calibrator.collect_data(_Reader())
        tensors = calibrator.compute_data()
    ranges = {
        name: (float(np.asarray(data.range_value[0]).min()), float(np.asarray(data.range_value[1]).max()))
        for name, data in tensors.items()
    }
    return Calibration(
        method,
        ranges,
        graph_sha256,
        sum(len(f[next(iter(f))]) for f in feeds),
        percentile if method == "percentile" else None,
        tuple(sorted(tolerant.fallback)) if tolerant else (),
    )
