"""The manifest's schema, checked on every read: a wrong type is one error naming the field.

A manifest comes from disk and may be hand-edited, truncated or hostile; every stage and
the runtime index into it, so a `files` list or a string batch range must stop at the
door with the field's name, not deep inside as an AttributeError.

Optional sections (additive: readers must accept a manifest without them):
- `head.scores`: the output holding one score per class (`logits`, `semantic_logits`);
  `Segmenter` reads it. Absent (older artifacts): `logits`, else `mask`, else the only output.
- `source`: where the model came from. Imported weights: `format`, `path`, `sha256`, ...
  A user's module (`segexport.export`, `onnx --model FILE.py:FUNCTION`): `kind: "python"`,
  `class`, `probe` (`num_classes`, `stride`, `output`: {`selector`, `scale`, `upsample`},
  `outputs_seen`), `classes_from`, `normalisation_assumed`, `state_sha256` (the exported
  module's parameters), and from the CLI `factory`, `arguments`, `weights` {path, sha256}.
  An adopted ONNX (`onnx --from-onnx`): `kind: "onnx"`, `path`, `sha256`, `output`, `scale`;
  its FP32 ONNX is the reference of every later stage. A scale s > 1 means the scores are at
  1/s of the input's resolution and the runtime resizes them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from segexport.errors import SegexportError
from segexport.runtime.preprocessing import INPUT_FORMATS

SCHEMA_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def plain_name_problem(name: object) -> str | None:
    """Why `name` is not a plain file name directly inside a directory, or None."""
    if not isinstance(name, str) or not name:
        return "is not a file name"
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return "is not a plain file name inside the artifact directory (no separators, '.' or '..')"
    return None


class _Checker:
    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, field: str, problem: str) -> SegexportError:
        return SegexportError(f"{self.source}: invalid manifest: field '{field}' {problem}")

    def mapping(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be an object, got {type(value).__name__}")
        return value

    def key(self, parent: dict[str, Any], key: str, field: str) -> Any:
        if key not in parent:
            raise self.fail(f"{field}.{key}" if field else key, "is missing")
        return parent[key]

    def integer(self, value: Any, field: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(field, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def number(self, value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise self.fail(field, f"must be a number, got {value!r}")
        return float(value)

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {type(value).__name__}")
        return value

    def listing(self, value: Any, field: str, length: int | None = None) -> list[Any]:
        if not isinstance(value, list) or (length is not None and len(value) != length):
            expected = "a list" if length is None else f"a list of {length}"
            raise self.fail(field, f"must be {expected}, got {value!r:.80}")
        return value


def validate_manifest(data: Any, source: Path) -> dict[str, Any]:
    """`data` as a manifest, or SegexportError naming the first field that is wrong."""
    check = _Checker(source)
    manifest = check.mapping(data, "(top level)")
    version = check.integer(check.key(manifest, "schema_version", ""), "schema_version", 1)
    if version > SCHEMA_VERSION:
        raise check.fail(
            "schema_version", f"is {version}: written by a newer segexport (this one reads {SCHEMA_VERSION})"
        )
    _files(check, check.key(manifest, "files", ""))
    _model(check, check.mapping(check.key(manifest, "model", ""), "model"))
    for section in ("inputs", "outputs"):
        for index, tensor in enumerate(check.listing(check.key(manifest, section, ""), section)):
            field = f"{section}[{index}]"
            tensor = check.mapping(tensor, field)
            check.string(check.key(tensor, "name", field), f"{field}.name")
            if "dtype" in tensor:
                check.string(tensor["dtype"], f"{field}.dtype")
            for axis, dim in enumerate(check.listing(tensor.get("shape", []), f"{field}.shape")):
                if not isinstance(dim, str):
                    check.integer(dim, f"{field}.shape[{axis}]")
    for dim_name, bounds in check.mapping(check.key(manifest, "dynamic_axes", ""), "dynamic_axes").items():
        low, high = (
            check.integer(v, f"dynamic_axes.{dim_name}", 1)
            for v in check.listing(bounds, f"dynamic_axes.{dim_name}", 2)
        )
        if low > high:
            raise check.fail(f"dynamic_axes.{dim_name}", f"is an empty range {low}..{high}")
    check.string(check.key(manifest, "export_shape", ""), "export_shape")
    if "size_rule" in manifest:
        rule = check.mapping(manifest["size_rule"], "size_rule")
        check.integer(check.key(rule, "divisible_by", "size_rule"), "size_rule.divisible_by", 1)
    head = manifest.get("head")
    if isinstance(head, dict) and head.get("scores") is not None:
        check.string(head["scores"], "head.scores")
    if "source" in manifest:
        origin = check.mapping(manifest["source"], "source")
        if "kind" in origin:
            check.string(origin["kind"], "source.kind")
    if "preprocessing" in manifest:
        _preprocessing(check, check.mapping(manifest["preprocessing"], "preprocessing"))
    if manifest.get("palette") is not None:
        _palette(check, manifest["palette"])
    for section in ("engines", "precisions", "verification", "onnx"):
        if section in manifest:
            for name, record in check.mapping(manifest[section], section).items():
                if section != "onnx":
                    check.mapping(record, f"{section}.{name}")
    return manifest


def _files(check: _Checker, value: Any) -> None:
    for name, entry in check.mapping(value, "files").items():
        problem = "is the manifest itself" if name == "manifest.json" else plain_name_problem(name)
        if problem:
            raise check.fail(f"files.{name}", problem)
        entry = check.mapping(entry, f"files.{name}")
        digest = check.key(entry, "sha256", f"files.{name}")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise check.fail(f"files.{name}.sha256", "must be 64 lowercase hex digits")
        check.integer(check.key(entry, "bytes", f"files.{name}"), f"files.{name}.bytes")


def _model(check: _Checker, model: dict[str, Any]) -> None:
    check.string(check.key(model, "name", "model"), "model.name")
    classes = check.integer(check.key(model, "num_classes", "model"), "model.num_classes", 1)
    names = check.listing(check.key(model, "class_names", "model"), "model.class_names", classes)
    for index, name in enumerate(names):
        check.string(name, f"model.class_names[{index}]")
    if "options" in model:
        check.mapping(model["options"], "model.options")
    weights = model.get("weights")
    if weights is not None:
        weights = check.mapping(weights, "model.weights")
        check.string(check.key(weights, "path", "model.weights"), "model.weights.path")
        check.string(check.key(weights, "sha256", "model.weights"), "model.weights.sha256")


def _preprocessing(check: _Checker, prep: dict[str, Any]) -> None:
    check.number(check.key(prep, "scale", "preprocessing"), "preprocessing.scale")
    for key in ("mean", "std"):
        values = check.listing(check.key(prep, key, "preprocessing"), f"preprocessing.{key}", 3)
        for index, value in enumerate(values):
            number = check.number(value, f"preprocessing.{key}[{index}]")
            if key == "std" and number <= 0:
                raise check.fail(f"preprocessing.std[{index}]", f"must be > 0, got {number}")
    if "input_format" in prep and prep["input_format"] not in INPUT_FORMATS:
        shown = str(prep["input_format"])[:40]
        raise check.fail(
            "preprocessing.input_format", f"must be one of {', '.join(INPUT_FORMATS)}, got {shown!r}"
        )


MAX_PALETTE_ROWS = 65536


def _palette(check: _Checker, value: Any) -> None:
    """Class colours: up to 65,536 rows of three integers 0..255 (a hand edit is one line)."""
    rows = check.listing(value, "palette")
    if len(rows) > MAX_PALETTE_ROWS:
        raise check.fail("palette", f"has {len(rows)} rows; at most {MAX_PALETTE_ROWS}")
    for index, row in enumerate(rows):
        for channel, level in enumerate(check.listing(row, f"palette[{index}]", 3)):
            if check.integer(level, f"palette[{index}][{channel}]") > 255:
                raise check.fail(f"palette[{index}][{channel}]", f"must be 0..255, got {level}")
