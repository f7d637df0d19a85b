"""The calibration cache (`quantize --calib-cache`): activation ranges tied to their FP32 graph,
read back through the bounded, typed JSON reader so a damaged cache is one line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from segexport.errors import SegexportError
from segexport.runtime.jsonfile import Fields, read_json


@dataclass(frozen=True)
class Calibration:
    """Activation ranges keyed by tensor name, tied to the FP32 graph they came from."""

    method: str
    ranges: dict[str, tuple[float, float]]
    graph_sha256: str
    images: int
    percentile: float | None = None

    def save(self, path: Path) -> None:
        data = {
            "graph_sha256": self.graph_sha256,
            "method": self.method,
            "percentile": self.percentile,
            "images": self.images,
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
        except SegexportError as error:
            redo = "delete it (or drop --calib-cache) to recalibrate"
            raise SegexportError(f"{error}: not a usable calibration cache; {redo}") from None
        return cls(method, ranges, graph_sha256, images, percentile)
