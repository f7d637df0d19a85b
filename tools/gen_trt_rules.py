#!/usr/bin/env python3
"""Generate `segexport/trt_rules.py`: what TensorRT's ONNX parser and builder accept, per release.

Run by hand when a TensorRT release is added, never at build time; commit the result.
Adding a release is a data change: put its sources in a new folder and rerun.

`--sources DIR` holds one folder per target release (e.g. `10.3/`, `10.16/`, `11.1/`), each with

- `operators.md`: onnx-tensorrt's `docs/operators.md` of that release (the support matrix:
  opset range, supported ops, input types, restrictions);
- `NvInfer.h`: NVIDIA/TensorRT's `include/NvInfer.h` of that release (Q/DQ and grouped-conv rules);
- `onnxOpImporters.cpp` (optional): onnx-tensorrt's importer source, where obtainable; it
  settles what the matrix is silent on (Squeeze without axes, cubic Resize);
- `SOURCES.json`: where each file came from (repo, ref, commit, path; a `note` when a file is
  from another release than the target, which the generated data repeats).

`tools/trt_sources/<release>/SOURCES.json` records where the committed data came from; put
the files it names beside it (they are third-party and not committed) and pass
`--sources tools/trt_sources`. For example, from clones of both repositories:
    git -C TensorRT show release/11.1:include/NvInfer.h > DIR/11.1/NvInfer.h
    git -C onnx-tensorrt show <commit TensorRT's parsers/onnx pins>:docs/operators.md \\
        > DIR/11.1/operators.md

Every entry in the output cites file, line and release. A rule whose wording is not found in
a release's sources is written as None for that release (the checker then reports
"uncertain" instead of guessing).
"""

from __future__ import annotations

import argparse
import json
import pprint
import re
import shutil
import subprocess
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
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("class IQuantizeLayer"))
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


def release_data(folder: Path) -> dict[str, Any]:
    sources = json.loads((folder / "SOURCES.json").read_text())
    data: dict[str, Any] = {"target": sources["target"], "sources": sources}
    data.update(parse_operators((folder / "operators.md").read_text(), sources["operators"]))
    data.update(parse_header((folder / "NvInfer.h").read_text(), sources["header"]))
    importer = folder / "onnxOpImporters.cpp"
    data["importer"] = (
        parse_importer(importer.read_text(), sources["importer"]) if importer.exists() else None
    )
    return data


def render(releases: dict[str, Any], targets: dict[str, str]) -> str:
    body = pprint.pformat(releases, width=110, sort_dicts=True)
    return (
        '"""TensorRT ONNX-parser and builder rules per release.\n\n'
        "GENERATED by tools/gen_trt_rules.py; do not edit.\n"
        "Each entry cites the file, line and release it came from (`cite`). Regenerate from the\n"
        "onnx-tensorrt and TensorRT sources of each release to add one.\n"
        '"""\n\n'
        "from typing import Any\n\n"
        f"TARGETS: dict[str, str] = {targets!r}\n\n"
        f"RELEASES: dict[str, Any] = {body}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=Path, required=True, help="one folder per release (see above)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "segexport" / "trt_rules.py"
    )
    args = parser.parse_args(argv)
    releases = {name: release_data(args.sources / name) for name in sorted(set(DEFAULT_TARGETS.values()))}
    args.out.write_text(render(releases, DEFAULT_TARGETS))
    ruff = shutil.which("ruff")
    if ruff:  # the committed module is ruff-formatted; keep regeneration diffs to real changes
        subprocess.run([ruff, "format", "--quiet", str(args.out)], check=True)
    print(f"wrote {args.out} ({', '.join(releases)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
