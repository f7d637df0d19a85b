"""Input shapes and dynamic ranges, parsed from the forms users type (`512x512`, `4x384x640`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from segexport.errors import SegexportError

_SIZE = re.compile(r"^\s*(\d+)\s*[xX,]\s*(\d+)\s*$")
_SHAPE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """`HxW` -> (H, W); a single number means a square."""
    text = text.strip()
    if text.isdigit():
        return int(text), int(text)
    match = _SIZE.match(text)
    if not match:
        raise SegexportError(f"size {text!r} is not of the form HxW (for example 512x512)")
    return int(match.group(1)), int(match.group(2))


def parse_shape(text: str) -> InputShape:
    """`BxHxW` -> InputShape, the form used to name verification shapes."""
    match = _SHAPE.match(text)
    if not match:
        raise SegexportError(f"shape {text!r} is not of the form BxHxW (for example 4x384x640)")
    batch, height, width = (int(g) for g in match.groups())
    return InputShape(batch, height, width)


@dataclass(frozen=True)
class InputShape:
    """One concrete input: batch plus, for image models, height and width."""

    batch: int
    height: int | None = None
    width: int | None = None

    def __str__(self) -> str:
        if self.height is None:
            return f"{self.batch}"
        return f"{self.batch}x{self.height}x{self.width}"


@dataclass(frozen=True)
class DynamicRange:
    """Inclusive ranges of the dynamic axes an artifact promises to accept."""

    min_batch: int
    max_batch: int
    min_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None

    def contains(self, shape: InputShape) -> bool:
        if not self.min_batch <= shape.batch <= self.max_batch:
            return False
        if self.min_size is None or self.max_size is None:
            return True
        assert shape.height is not None and shape.width is not None
        return (
            self.min_size[0] <= shape.height <= self.max_size[0]
            and self.min_size[1] <= shape.width <= self.max_size[1]
        )

    def describe(self) -> str:
        text = f"batch {self.min_batch}..{self.max_batch}"
        if self.min_size is not None and self.max_size is not None:
            text += (
                f", height {self.min_size[0]}..{self.max_size[0]}"
                f", width {self.min_size[1]}..{self.max_size[1]}"
            )
        return text
