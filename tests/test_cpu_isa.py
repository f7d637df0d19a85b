"""The CPU's INT8 arithmetic: the probe, the scheme it selects, and the runtime's warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from segexport import precision
from segexport.errors import SegexportError
from segexport.runtime import cpu_isa
from segexport.runtime.runners import open_runner
from tests.qdq_checks import int8_conv_weights

VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def test_probe_is_valid_onnx_and_matches_the_cpu_flags() -> None:
    """The hand-written probe is a valid model; its verdict agrees with what the CPU flags imply
    (x86 with AVX2 and no VNNI flavour saturates, any VNNI flavour does not)."""
    onnx.checker.check_model(onnx.load_from_string(cpu_isa.probe_model()), full_check=True)
    found = cpu_isa.detect_cpu_isa()
    assert found in cpu_isa.CPU_ISAS
    flags = set(cpu_isa.cpu_flags())
    if flags & VNNI_FLAGS:
        assert found == "vnni", flags
    elif "avx2" in flags:
        assert found == "avx2", flags
    else:
        pytest.skip(f"no AVX2 or VNNI flags in /proc/cpuinfo ({sorted(flags)}): nothing to compare with")


def test_avx2_weights_cannot_saturate_and_vnni_weights_can() -> None:
    """`vpmaddubsw` adds two UINT8 x INT8 products into a saturating int16: the AVX2 scheme's
    weights keep 2 x 255 x |w| inside it for any input, the VNNI scheme's full range does not."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"w1": rng.normal(size=(8, 16, 1, 1)), "w2": rng.normal(size=(4, 8, 1, 1))}
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["h"], name="body"),
            helper.make_node("Conv", ["h", "w2"], ["y"], name="classifier"),  # stays float
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 2])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    ranges = {"x": (0.0, 4.0), "h": (-8.0, 8.0), "y": (-8.0, 8.0)}
    calibration = precision.Calibration("minmax", ranges, "sha", 1)
    largest = {}
    for isa in cpu_isa.CPU_ISAS:
        int8 = precision.to_int8(model, calibration, scheme=precision.int8_cpu_scheme(isa))
        quantized = int8_conv_weights(int8)
        assert len(quantized) == 1, f"{isa}: expected the body's weights quantized"
        largest[isa] = int(np.abs(quantized[0]).max())
    assert 2 * 255 * largest["avx2"] <= 32767 < 2 * 255 * largest["vnni"], largest


def test_scheme_names_its_target() -> None:
    assert precision.int8_cpu_scheme("avx2").reduce_range is True
    assert precision.int8_cpu_scheme("vnni").reduce_range is False
    assert "AVX2" in precision.int8_cpu_scheme("avx2").purpose
    assert cpu_isa.resolve_cpu_isa("auto") == cpu_isa.detect_cpu_isa()
    assert cpu_isa.resolve_cpu_isa("avx2") == "avx2"
    with pytest.raises(SegexportError, match="--cpu-isa 'sse4'"):
        cpu_isa.resolve_cpu_isa("sse4")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512f avx512bw\n\n")
    assert cpu_isa.cpu_flags(cpuinfo) == ["avx2", "avx512f", "avx512bw"]
    assert cpu_isa.cpu_flags(tmp_path / "missing") == []


@pytest.mark.parametrize(
    ("target", "here", "expected"),
    [("vnni", "vnni", None), ("avx2", "avx2", None), ("vnni", "avx2", "saturate"), ("avx2", "vnni", "7-bit")],
)
def test_runtime_warns_when_int8_cpu_meets_another_cpu(
    target: str, here: str, expected: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu_isa, "detect_cpu_isa", lambda: here)
    manifest = {"precisions": {"int8-cpu": {"cpu_isa": {"target": target}}}}
    problem = cpu_isa.int8_cpu_mismatch(manifest, "model.int8-cpu.onnx")
    assert (problem is None) == (expected is None)
    if expected is not None:
        assert expected in str(problem)
    assert cpu_isa.int8_cpu_mismatch(manifest, "model.onnx") is None


def test_opening_a_mismatched_int8_cpu_graph_warns(
    small_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warning reaches users through the runtime's loaders (segexport run, Segmenter, verify)."""
    import shutil

    from segexport.runtime.artifacts import MANIFEST, read_manifest, record_files, write_json_atomic
    from segexport.runtime.backends import select_runner

    artifact = tmp_path / "a"
    shutil.copytree(small_artifact, artifact)
    shutil.copyfile(artifact / "model.onnx", artifact / "model.int8-cpu.onnx")
    manifest = read_manifest(artifact)
    manifest["precisions"] = {"int8-cpu": {"cpu_isa": {"target": "vnni"}}}
    record_files(artifact, manifest, ["model.int8-cpu.onnx"])
    write_json_atomic(artifact / MANIFEST, manifest)
    monkeypatch.setattr(cpu_isa, "detect_cpu_isa", lambda: "avx2")
    with pytest.warns(RuntimeWarning, match="quantized for VNNI CPUs"):
        open_runner(artifact, "model.int8-cpu.onnx", manifest)
    with pytest.warns(RuntimeWarning, match="quantized for VNNI CPUs"):
        _, selection = select_runner(artifact, manifest, "onnxruntime-cpu", "int8")
    assert selection.file_name == "model.int8-cpu.onnx"  # INT8 on the CPU is the CPU's graph
    monkeypatch.setattr(cpu_isa, "detect_cpu_isa", lambda: "vnni")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_runner(artifact, "model.int8-cpu.onnx", manifest)
