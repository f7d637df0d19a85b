"""The committed TensorRT rules are what tools/gen_trt_rules.py makes of the committed sources.

segexport/trt_rules/*.json is generated data; tools/trt_sources/<release>/ holds the excerpts of
onnx-tensorrt's and TensorRT's files it is generated from. Regenerating must give the same
bytes, so a hand edit of the data, or a source excerpt changed without regenerating, fails here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from segexport.trt_rules import load_release

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DATA = REPO / "segexport" / "trt_rules"


def _generator() -> ModuleType:
    """tools/ is not a package: load the script as a module."""
    spec = importlib.util.spec_from_file_location("gen_trt_rules", REPO / "tools" / "gen_trt_rules.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_rules_are_what_the_sources_generate(tmp_path: Path) -> None:
    _generator().main(["--sources", str(REPO / "tools" / "trt_sources"), "--out", str(tmp_path)])
    generated = {path.name: path.read_bytes() for path in tmp_path.glob("*.json")}
    committed = {path.name: path.read_bytes() for path in PACKAGE_DATA.glob("*.json")}
    assert sorted(generated) == sorted(committed) == ["10.16.json", "10.3.json", "11.1.json", "targets.json"]
    for name, data in committed.items():
        assert data == generated[name], f"segexport/trt_rules/{name} differs from what the generator makes"


def test_an_excerpt_keeps_the_original_line_numbers(tmp_path: Path) -> None:
    excerpt = tmp_path / "NvInfer.h"
    excerpt.write_text(
        "// preamble, not part of the original\n"
        "// excerpt: lines 1-2 of include/NvInfer.h\n/*\n */\n"
        "// excerpt: lines 5-6 of include/NvInfer.h\n//! five\n//! six\n"
    )
    read_source = _generator().read_source
    assert read_source(excerpt, ["1-2", "5-6"]).splitlines() == ["/*", " */", "", "", "//! five", "//! six"]
    with pytest.raises(SystemExit, match=r"differ from SOURCES\.json"):
        read_source(excerpt, ["1-2", "5-7"])
    excerpt.write_text("// excerpt: lines 5-7 of include/NvInfer.h\n//! five\n//! six\n")
    with pytest.raises(SystemExit, match="not 3 lines"):
        read_source(excerpt, ["5-7"])


def test_every_cite_lands_on_a_line_the_excerpts_keep() -> None:
    generator = _generator()
    for release in ("10.3", "10.16", "11.1"):
        data = load_release(release)
        sources = REPO / "tools" / "trt_sources" / release / "SOURCES.json"
        excerpts = json.loads(sources.read_text())["excerpts"]
        for key, spans in excerpts.items():
            kept = set()
            for span in spans:
                first, last = map(int, span.split("-"))
                kept |= set(range(first, last + 1))
            cited = generator.cited_lines(data, data["sources"][key])
            assert cited and cited <= kept, (release, key)


def test_an_unknown_release_is_refused() -> None:
    with pytest.raises(KeyError, match=r"10\.16"):
        load_release("9.0")


def test_generator_reads_the_operator_matrix_format() -> None:
    text = "\n".join(
        [
            "TensorRT 12.0 supports operators in the inclusive range of opset 9 to opset 30.",
            "> Note: UINT8 is only supported as network input or output tensor types.",
            "| Operator | Supported | Supported Types | Restrictions |",
            "| Squeeze | Y | FP32, INT64 | `axes` must be resolvable to a constant. |",
            "| Det | N |",
            "| Resize | Y | FP32 | Supported resize transformation modes: `half_pixel`.<br />"
            "Supported resize modes: `nearest`.<br />Supported nearest modes: `floor`. |",
        ]
    )
    source = {"repo": "r", "ref": "v", "commit": "0" * 40, "path": "docs/operators.md"}
    data = _generator().parse_operators(text, source)
    assert data["opset"]["min"] == 9 and data["opset"]["max"] == 30
    assert data["ops"]["Squeeze"]["types"] == ["FP32", "INT64"]
    assert data["constant_inputs"]["Squeeze"][0]["input"] == 1  # `axes` is Squeeze's second input
    assert data["unsupported_ops"]["Det"].endswith("docs/operators.md:5")
    assert data["resize"]["mode"] == ["nearest"] and data["resize"]["antialias"]
