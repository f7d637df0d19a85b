"""Reading JSON that someone else wrote: size and nesting bounded before parsing, fields typed.

Third-party configs (a Hugging Face or timm `config.json`) and our own caches (calibration
ranges, sensitivity) are read through here, so a hostile or damaged file is one line naming
the file and the field, never a RecursionError, a MemoryError or a numpy error later.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from segexport.errors import SegexportError
from segexport.runtime.preprocessing import open_regular_file

MAX_JSON_BYTES = 16 << 20
MAX_JSON_DEPTH = 64


def _depth(text: str) -> int:
    """The deepest [ / { nesting of a JSON text (strings skipped), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def read_json(path: Path, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A regular file's JSON, refused in one line when over `max_bytes`, nested deeper than
    MAX_JSON_DEPTH, or not JSON."""
    with open_regular_file(path, what) as handle:
        raw = handle.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise SegexportError(f"{path}: over {max_bytes:,} bytes; not a {what}, refusing to parse it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SegexportError(f"{path}: not UTF-8 text ({error.reason}); not a {what}") from None
    if _depth(text) > MAX_JSON_DEPTH:
        raise SegexportError(f"{path}: nested deeper than {MAX_JSON_DEPTH} levels; not a {what}")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise SegexportError(f"{path}: not readable JSON ({error})") from None


class Fields:
    """Typed access to a JSON document's fields; each failure names the file and the field."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, field: str, problem: str) -> SegexportError:
        return SegexportError(f"{self.source}: field '{field}' {problem}")

    def mapping(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be an object, got {type(value).__name__}")
        return value

    def integer(self, value: Any, field: str, low: int = 0, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            span = f"{low}..{high}" if high is not None else f">= {low}"
            raise self.fail(field, f"must be an integer {span}, got {value!r:.40}")
        return value

    def number(self, value: Any, field: str, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(field, f"must be a finite number, got {value!r:.40}")
        if positive and value <= 0:
            raise self.fail(field, f"must be > 0, got {value!r}")
        return float(value)

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {type(value).__name__}")
        return value

    def boolean(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(field, f"must be true or false, got {value!r:.40}")
        return value

    def listing(self, value: Any, field: str, length: int | None = None, most: int = 65536) -> list[Any]:
        if not isinstance(value, list) or (length is not None and len(value) != length) or len(value) > most:
            expected = f"a list of {length}" if length is not None else f"a list of at most {most}"
            raise self.fail(field, f"must be {expected}, got {value!r:.60}")
        return value

    def triple(self, value: Any, field: str, positive: bool = False) -> tuple[float, float, float]:
        """Three finite numbers (a mean or std per RGB channel); `positive`: each > 0."""
        a, b, c = (
            self.number(v, f"{field}[{i}]", positive) for i, v in enumerate(self.listing(value, field, 3))
        )
        return a, b, c

    def interval(self, value: Any, field: str) -> tuple[float, float]:
        """[low, high]: two finite numbers with low <= high (an activation range)."""
        low, high = (self.number(v, field) for v in self.listing(value, field, 2))
        if low > high:
            raise self.fail(field, f"is an empty range {low}..{high}")
        return low, high
