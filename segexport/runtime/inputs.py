"""The inputs an artifact was verified for, checked before anything runs.

An ONNX graph runs shapes outside its verified range without complaint (or fails deep
inside with a Concat error when a size breaks the stride rule); every runner (ONNX
Runtime, TensorRT, the segmenter) asks `check_input_shapes` first, so a wrong shape is
refused with the rule it breaks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from segexport.errors import SegexportError


def input_shape_problem(manifest: Mapping[str, Any], name: str, shape: Sequence[int]) -> str | None:
    """Why `shape` for input `name` is outside what the manifest vouches for, or None."""
    declared = {tensor["name"]: tensor.get("shape") for tensor in manifest["inputs"]}
    if name not in declared:
        return f"the model has no input {name!r}; it takes {', '.join(declared)}"
    dims = declared[name]
    if dims is None:
        return None  # a manifest without the shape (hand-written) leaves it to the backend
    shown = "x".join(str(d) for d in shape)
    if len(shape) != len(dims):
        return f"input {name} has {len(shape)} dimensions ({shown}); the model takes {len(dims)}: {dims}"
    ranges = manifest["dynamic_axes"]
    divisible = int(manifest.get("size_rule", {}).get("divisible_by", 1))
    for axis, (size, dim) in enumerate(zip(shape, dims, strict=True)):
        if isinstance(dim, int) and dim > 0:
            if size != dim:
                return f"input {name} of shape {shown}: dimension {axis} must be {dim}, got {size}"
            continue
        if dim not in ranges:
            continue  # a symbolic axis the export did not bound (none today)
        low, high = ranges[dim]
        if not low <= size <= high:
            return f"input {name} of shape {shown}: {dim} {size} is outside the verified range {low}..{high}"
        if dim in ("height", "width") and size % divisible:
            return (
                f"input {name} of shape {shown}: {dim} {size} is not a multiple of {divisible} "
                f"(the model's output stride); resize or pad to a multiple of {divisible}"
            )
    return None


def check_input_shapes(
    manifest: Mapping[str, Any], shapes: Mapping[str, Sequence[int]], who: str = "model"
) -> None:
    """Raise SegexportError (naming `who`) when any input shape breaks the manifest's ranges or rule."""
    for name, shape in shapes.items():
        problem = input_shape_problem(manifest, name, shape)
        if problem:
            raise SegexportError(f"{who}: {problem}")
    missing = sorted({tensor["name"] for tensor in manifest["inputs"]} - set(shapes))
    if missing:
        raise SegexportError(f"{who}: missing inputs {', '.join(missing)}")
