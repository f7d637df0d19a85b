#!/usr/bin/env python3
"""Generate `segexport/trt_rules/*.json`: what TensorRT's ONNX parser and builder accept, per release.

Run by hand when a TensorRT release is added, never at build time; commit the result.
Adding a release is a data change: put its sources in a new folder and rerun.
tests/test_trt_rules_sync.py reruns it on the committed sources and compares.

`--sources DIR` holds one folder per target release (e.g. `10.3/`, `10.16/`, `11.1/`), each with

- `operators.md`: onnx-tensorrt's `docs/operators.md` of that release (the support matrix:
  opset range, supported ops, input types, restrictions);
- `NvInfer.h`: NVIDIA/TensorRT's `include/NvInfer.h` of that release (Q/DQ and grouped-conv rules);
- `onnxOpImporters.cpp` (optional): onnx-tensorrt's importer source, where obtainable; it
  settles what the matrix is silent on (Squeeze without axes, cubic Resize);
- `SOURCES.json`: where each file came from (repo, ref, commit, path; a `note` when a file is
  from another release than the target, which the generated data repeats; `excerpts`: the
  original line ranges each committed file keeps).

`tools/trt_sources/<release>/` commits excerpts of those files (see `read_source`): the licence
block, and only the lines the data cites, with their comment blocks, under their original line
numbers (operators.md whole). To add or refresh a release, put the whole files there, e.g.
    git -C TensorRT show release/11.1:include/NvInfer.h > DIR/11.1/NvInfer.h
    git -C onnx-tensorrt show <commit TensorRT's parsers/onnx pins>:docs/operators.md \\
        > DIR/11.1/operators.md
and run with `--write-excerpts`, which cuts them down and records the ranges in SOURCES.json.

Every entry in the output cites file, line and release. A rule whose wording is not found in
a release's sources is written as null for that release (the checker then reports
"uncertain" instead of guessing).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import onnx.defs

# Aliases users pass to `--target`; each names the folder of the release it stands for.
DEFAULT_TARGETS = {"10.3": "10.3", "10.x": "10.16", "11.x": "11.1"}

# Restriction wordings that require an input to be known when the engine is built.
CONSTANT_WORDING = re.compile(
    r"`(?P<name>[A-Za-z_]+)`(?: input)? must be "
    r"(?P<what>an initializer|a constant tensor|resolvable to a constant|a build-time constant)"
)
RESIZE_LISTS = {
    "coordinate_transformation_mode": r"Supported resize transformation modes: (.*?)\.<br",
    "mode": r"Supported resize modes: (.*?)\.<br",
    "nearest_mode": r"Supported nearest modes: (.*?)\.(?:<br|\s*\|)",
}
HEADER_ANCHORS = {
    # (anchor text, what it says); the first match inside the IQuantizeLayer comment block.
    "zero_point_zero": r"zeroPt must only contain zero-valued coefficients",
    "zero_point_constant": r"zeroPt tensor must be a build-time constant containing only zeros"
    r"|The same restrictions apply to the \\p zeroPt",
    "scale_positive": r"scale coefficients must have (?:strictly )?positive values",
    "scale_constant": r"The subgraph which terminates with the \\p scale tensor "
    r"must be a build-time constant",
    "per_channel_weights_only": r"Per-channel quantization is supported only for weight inputs",
}


def cite(source: dict[str, Any], line: int) -> str:
    return f"{source['repo']}@{source['ref']} ({source['commit'][:8]}) {source['path']}:{line}"


def input_index(op: str, name: str) -> int | None:
    """Position of the named input in the newest ONNX schema of `op` (from the onnx package)."""
    try:
        schema = onnx.defs.get_schema(op)
    except onnx.defs.SchemaError:
        return None
    names = [formal.name for formal in schema.inputs]
    return names.index(name) if name in names else None


def parse_operators(text: str, source: dict[str, Any]) -> dict[str, Any]:
    lines = text.splitlines()
    data: dict[str, Any] = {"ops": {}, "unsupported_ops": {}, "constant_inputs": {}}
    for number, line in enumerate(lines, 1):
        header = re.search(
            r"TensorRT ([0-9.]+) supports operators in the inclusive range of opset (\d+) to opset (\d+)",
            line,
        )
        if header:
            data["docs_version"] = header.group(1)
            data["opset"] = {
                "min": int(header.group(2)),
                "max": int(header.group(3)),
                "cite": cite(source, number),
            }
        if "UINT8 is only supported as network input or output" in line:
            data["uint8_io_only"] = cite(source, number)
        row = re.match(r"\|\s*([A-Za-z0-9]+)\s*\|\s*(Y|N)[^|]*\|?(.*)$", line)
        if not row or row.group(1) == "Operator":
            continue
        op, supported, rest = row.group(1), row.group(2), row.group(3)
        if supported == "N":
            data["unsupported_ops"][op] = cite(source, number)
            continue
        cells = [cell.strip() for cell in rest.split("|")]
        types = [t.strip() for t in cells[0].split(",") if t.strip()] if cells else []
        restrictions = cells[1] if len(cells) > 1 else ""
        data["ops"][op] = {"types": types, "restrictions": restrictions, "cite": cite(source, number)}
        for match in CONSTANT_WORDING.finditer(restrictions):
            index = input_index(op, match.group("name"))
            if (
                index is None
            ):  # an attribute, not an input (e.g. `axis` of CumSum is an input; `sorted` is not)
                continue
            data["constant_inputs"].setdefault(op, []).append(
                {
                    "input": index,
                    "name": match.group("name"),
                    "wording": match.group(0),
                    "cite": cite(source, number),
                }
            )
        if op == "Resize":
            resize: dict[str, Any] = {
                "cite": cite(source, number),
                "antialias": "Antialiasing is not supported" not in restrictions,
            }
            for key, pattern in RESIZE_LISTS.items():
                found = re.search(pattern, restrictions)
                resize[key] = re.findall(r"`([a-z_]+)`", found.group(1)) if found else None
            data["resize"] = resize
    for required in ("opset", "uint8_io_only", "resize"):
        if required not in data:
            raise SystemExit(f"{source['path']}: no {required} found; the format changed, update this script")
    return data


def _find_line(lines: list[str], start: int, end: int, pattern: str) -> int | None:
    """1-based line where `pattern` starts, allowing it to run on into the next comment line."""
    for i in range(start, end):
        here = lines[i].removeprefix("//!").strip()
        joined = here + " " + lines[i + 1].removeprefix("//!").strip()
        found = re.search(pattern, joined)
        if found and found.start() <= len(here):
            return i + 1
    return None


def parse_header(text: str, source: dict[str, Any]) -> dict[str, Any]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"//! \\class IQuantizeLayer", line))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("//!"))
    qdq: dict[str, Any] = {}
    for key, pattern in HEADER_ANCHORS.items():
        number = _find_line(lines, start, end, pattern)
        qdq[key] = None if number is None else cite(source, number)
    types_at = next(
        i for i in range(start, end) if "The output type, if constrained, must be constrained to" in lines[i]
    )
    sentence = " ".join(lines[types_at : types_at + 2])
    sentence = sentence[: sentence.index(". The")] if ". The" in sentence else sentence
    qdq["types"] = [name.upper() for name in re.findall(r"DataType::k([A-Z0-9]+)", sentence)]
    qdq["types_cite"] = cite(source, types_at + 1)
    grouped = next(
        i for i, line in enumerate(lines) if "must be a multiple of 4 for both input and output" in line
    )
    qdq["int8_group_multiple"] = 4
    qdq["int8_group_cite"] = cite(source, grouped + 1)
    qdq["section_cite"] = cite(source, start + 1)
    add_input = next(
        i for i, line in enumerate(lines) if re.search(r"ITensor\* addInput\(char const\* name", line)
    )
    return {"qdq": qdq, "add_input_cite": cite(source, add_input + 1)}


def parse_importer(text: str, source: dict[str, Any]) -> dict[str, Any]:
    lines = text.splitlines()
    found: dict[str, Any] = {}
    squeeze = next(
        (i for i, line in enumerate(lines) if "Cannot infer squeeze dimensions from a dynamic shape" in line),
        None,
    )
    found["squeeze_omitted_axes_static_only"] = None if squeeze is None else cite(source, squeeze + 1)
    cubic = next(
        (i for i, line in enumerate(lines) if "InterpolationMode::kCUBIC" in line and "=" in line), None
    )
    found["resize_cubic_mapped"] = None if cubic is None else cite(source, cubic + 1)
    return found


# Which file of a release folder holds which source of SOURCES.json.
SOURCE_FILES = {"operators": "operators.md", "header": "NvInfer.h", "importer": "onnxOpImporters.cpp"}
# Sources kept whole when excerpted: the support matrix is read row by row.
KEPT_WHOLE = {"operators"}
EXCERPT_MARKER = re.compile(r"^(?://|<!--) excerpt: lines (\d+)-(\d+) of (\S+)")


def read_source(path: Path, expected: list[str] | None) -> str:
    """A source's text with its original line numbers, from the whole file or from an excerpt.

    An excerpt is a preamble, then for each kept range a marker line
    (`// excerpt: lines A-B of PATH`, or `<!-- ... -->` in Markdown) and exactly those lines.
    Lines it leaves out come back blank, so every cite names the line of the original file.
    `expected` is the ranges SOURCES.json records (`"A-B"`); the markers must agree with it.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    markers = [i for i, line in enumerate(lines) if EXCERPT_MARKER.match(line)]
    if not markers and expected is None:
        return "\n".join(lines) + "\n"
    original: list[str] = []
    ranges: list[str] = []
    for at, end in zip(markers, [*markers[1:], len(lines)], strict=True):
        found = EXCERPT_MARKER.match(lines[at])
        assert found is not None
        first, last = int(found.group(1)), int(found.group(2))
        body = lines[at + 1 : end]
        if first <= len(original) or len(body) != last - first + 1:
            count = last - first + 1
            raise SystemExit(f"{path}: the excerpt of lines {first}-{last} is not {count} lines in order")
        original += [""] * (first - 1 - len(original)) + body
        ranges.append(f"{first}-{last}")
    if ranges != expected:
        raise SystemExit(f"{path}: excerpt lines {ranges} differ from SOURCES.json's {expected}")
    return "\n".join(original) + "\n"


def release_data(folder: Path) -> dict[str, Any]:
    sources = json.loads((folder / "SOURCES.json").read_text())
    excerpts = sources.pop("excerpts", {})
    data: dict[str, Any] = {"target": sources["target"], "sources": sources}

    def text(key: str) -> str:
        return read_source(folder / SOURCE_FILES[key], excerpts.get(key))

    data.update(parse_operators(text("operators"), sources["operators"]))
    data.update(parse_header(text("header"), sources["header"]))
    importer = folder / SOURCE_FILES["importer"]
    data["importer"] = parse_importer(text("importer"), sources["importer"]) if importer.exists() else None
    return data


def cited_lines(data: Any, source: dict[str, Any]) -> set[int]:
    """The lines of `source` that the generated data cites."""
    prefix = cite(source, 0).removesuffix("0")
    if isinstance(data, dict):
        return set().union(*(cited_lines(value, source) for value in data.values()))
    if isinstance(data, list):
        return set().union(*(cited_lines(value, source) for value in data))
    if isinstance(data, str) and data.startswith(prefix):
        return {int(data.removeprefix(prefix))}
    return set()


def excerpt_ranges(lines: list[str], cited: set[int]) -> list[list[int]]:
    """The licence block, and for each cited line its `//!` comment block (the one above a code line)."""

    def comment(i: int) -> bool:
        return 0 <= i < len(lines) and lines[i].lstrip().startswith("//!")

    licence = next((i for i, line in enumerate(lines[:40]) if line.rstrip().endswith(("*/", "-->"))), -1)
    spans = [(0, licence)] if licence >= 0 else []
    for number in sorted(cited):
        top = bottom = number - 1
        if comment(top):
            while comment(bottom + 1):
                bottom += 1
        elif comment(top - 1):  # a code line: keep the comment block that documents it
            top -= 1
        while comment(top) and comment(top - 1):
            top -= 1
        spans.append((top, bottom))
    merged: list[list[int]] = []
    for top, bottom in sorted(spans):
        if merged and top <= merged[-1][1]:  # overlapping or adjacent (1-based end vs 0-based start)
            merged[-1][1] = max(merged[-1][1], bottom + 1)
        else:
            merged.append([top + 1, bottom + 1])
    return merged


def write_excerpt(path: Path, source: dict[str, Any], ranges: list[list[int]]) -> None:
    """Replace the whole file at `path` by the excerpt of `ranges` (see `read_source`)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    markdown = path.suffix == ".md"

    def comment(words: str) -> str:
        return f"<!-- {words} -->" if markdown else f"// {words}"

    out = [
        comment(f"Excerpt of {source['repo']}@{source['ref']} ({source['commit']}) {source['path']},"),
        comment("Apache-2.0 like the original, whose licence block is kept first. Only the marked line"),
        comment("ranges are kept, under their original line numbers; see tools/gen_trt_rules.py."),
    ]
    for first, last in ranges:
        out.append(comment(f"excerpt: lines {first}-{last} of {source['path']}"))
        out += lines[first - 1 : last]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def excerpt_release(folder: Path) -> None:
    """Cut a release folder's whole source files down to what the data cites; record it in SOURCES.json."""
    data = release_data(folder)
    sources = json.loads((folder / "SOURCES.json").read_text())
    sources["excerpts"] = {}
    for key, name in SOURCE_FILES.items():
        path = folder / name
        if not path.exists():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        if key in KEPT_WHOLE:
            ranges = [[1, len(lines)]]
        else:
            ranges = excerpt_ranges(lines, cited_lines(data, sources[key]))
        write_excerpt(path, sources[key], ranges)
        sources["excerpts"][key] = [f"{first}-{last}" for first, last in ranges]
    (folder / "SOURCES.json").write_text(json.dumps(sources, indent=1) + "\n")
    if release_data(folder) != data:
        raise SystemExit(f"{folder}: the excerpts do not give the data the whole files give")


def render(data: Any) -> str:
    """The committed JSON form: sorted keys, one-space indent, trailing newline."""
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=Path, required=True, help="one folder per release (see above)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "segexport" / "trt_rules"
    )
    parser.add_argument(
        "--write-excerpts",
        action="store_true",
        help="first replace whole source files in --sources by excerpts of the lines the data cites",
    )
    args = parser.parse_args(argv)
    names = sorted(set(DEFAULT_TARGETS.values()))
    if args.write_excerpts:
        for name in names:
            excerpt_release(args.sources / name)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (args.out / f"{name}.json").write_text(render(release_data(args.sources / name)), encoding="utf-8")
    (args.out / "targets.json").write_text(render(DEFAULT_TARGETS), encoding="utf-8")
    print(f"wrote {args.out} ({', '.join(names)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
