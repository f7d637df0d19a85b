"""The PyTorch reference recorded at export (reference.npz): written, vouched, judged without
PyTorch by verify and trt, refused when bad; and the engine's delivered precision."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segexport.build import BuildOptions, BuildRequest, build_artifact
from segexport.errors import SegexportError
from segexport.runtime.artifacts import read_manifest, record_files
from segexport.runtime.files import REFERENCE_FILE, engine_file_name
from segexport.runtime.recorded import MAX_REFERENCE_BYTES, read_reference
from tests.clitools import assert_one_line_error, run
from tests.emulator import install


@pytest.fixture
def artifact(small_artifact: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "unet-small"
    shutil.copytree(small_artifact, copy)
    return copy


def test_export_records_a_vouched_reference_loaded_without_pickle(artifact: Path) -> None:
    manifest = read_manifest(artifact)
    entry = manifest["files"][REFERENCE_FILE]
    assert 0 < entry["bytes"] <= MAX_REFERENCE_BYTES
    with np.load(artifact / REFERENCE_FILE, allow_pickle=False) as archive:
        assert archive["images_images"].dtype == np.uint8
        assert archive["images_out0"].dtype == np.float32
    reference = read_reference(artifact, manifest)
    kinds = [s.kind for s in reference.sets]
    assert kinds[0] == "images" and kinds.count("shape") == len(manifest["verification"]["fp32"]["shapes"])
    assert reference.output_names == ["logits"] and reference.label_outputs == ["logits"]


def test_verify_against_the_recording_says_pytorch_was_not_rerun(artifact: Path) -> None:
    code, out, err = run("verify", "--artifacts", str(artifact), "--against", "recorded", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["data"]["note"].endswith("PyTorch was not rerun")
    (judged,) = report["artifacts"]
    assert judged["file"] == "model.onnx" and judged["status"] == "passed"
    assert judged["outputs"][0]["agreement"] == 1.0 and judged["outputs"][0]["rel_l2"] < 1e-5


def test_verify_flags_a_planted_fault_naming_the_file(artifact: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(artifact / "model.onnx"))
    weight = next(t for t in model.graph.initializer if numpy_helper.to_array(t).ndim == 4)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 3.0, weight.name))
    onnx.save(model, str(artifact / "model.onnx"))
    record_files(artifact, read_manifest(artifact), ["model.onnx"])
    code, _, err = run("verify", "--artifacts", str(artifact), "--against", "recorded")
    assert_one_line_error(code, err, "model.onnx: output logits: rel L2", exit_code=1, after_progress=True)


def test_segexport_reference_adds_one_to_an_old_artifact(artifact: Path) -> None:
    manifest = read_manifest(artifact)
    del manifest["files"][REFERENCE_FILE]
    (artifact / REFERENCE_FILE).unlink()
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run("verify", "--artifacts", str(artifact), "--against", "recorded")
    assert_one_line_error(code, err, f"segexport reference --artifacts {artifact}")
    code, _, err = run("reference", "--artifacts", str(artifact))
    assert code == 0, err
    assert run("verify", "--artifacts", str(artifact), "--against", "recorded")[0] == 0


# --------------------------------------------------------------------------- bad reference files


def _rewrite(artifact: Path, change: Callable[[dict[str, np.ndarray]], None], vouch: bool = True) -> None:
    with np.load(artifact / REFERENCE_FILE, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    change(arrays)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # allow_pickle defaults to True: object arrays go in
    (artifact / REFERENCE_FILE).write_bytes(buffer.getvalue())
    if vouch:
        record_files(artifact, read_manifest(artifact), [REFERENCE_FILE])


def _meta(arrays: dict[str, np.ndarray], key: str, value: Any) -> None:
    meta = json.loads(arrays["meta"].tobytes())
    meta[key] = value
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)


def _unlist(artifact: Path) -> None:
    manifest = read_manifest(artifact)
    del manifest["files"][REFERENCE_FILE]
    (artifact / "manifest.json").write_text(json.dumps(manifest))


def _remove(artifact: Path) -> None:
    _unlist(artifact)
    (artifact / REFERENCE_FILE).unlink()


BAD: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (_remove, "is missing"),
    "not vouched": (_unlist, "is not listed in manifest.json"),
    "altered": (
        lambda a: _rewrite(a, lambda x: x.update(images_out0=x["images_out0"] + 1), False),
        "changed",
    ),
    "wrong dtype": (
        lambda a: _rewrite(a, lambda x: x.update(images_out0=x["images_out0"].astype(np.float64))),
        "expected float32",
    ),
    "wrong shape": (
        lambda a: _rewrite(a, lambda x: x.update(images_out0=x["images_out0"][:, 0])),
        "output logits",
    ),
    "pickled": (
        lambda a: _rewrite(a, lambda x: x.update(evil=np.array([{"a": 1}], dtype=object))),
        "holds pickled objects",
    ),
    "other classes": (lambda a: _rewrite(a, lambda x: _meta(x, "class_names", ["a", "b"])), "other classes"),
    "other preprocessing": (
        lambda a: _rewrite(a, lambda x: _meta(x, "preprocessing", {"mean": [0, 0, 0]})),
        "other preprocessing",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_reference_stops_trt_before_any_engine(
    case: str, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch)
    spoil, message = BAD[case]
    spoil(artifact)
    code, _, err = run("trt", "--artifacts", str(artifact), "--fp32")
    assert_one_line_error(code, err, message, exit_code=2, after_progress=True)
    assert not (artifact / engine_file_name("fp32")).exists()
    code, _, err = run("verify", "--artifacts", str(artifact), "--against", "recorded")
    assert_one_line_error(code, err, message, exit_code=2, after_progress=True)


# --------------------------------------------------------------------------- delivered precision


def test_engine_records_per_layer_precision_cache_and_workspace(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch)
    options = BuildOptions(precision="fp32", max_size=(96, 128), max_batch=2)
    messages: list[str] = []
    manifest = build_artifact(BuildRequest(options, artifacts=artifact), progress=messages.append)
    record = manifest["engines"][engine_file_name("fp32")]
    delivered = record["delivered"]
    assert delivered["layers"] > 10 and set(delivered["precisions"]) <= {"fp32", "other"}
    assert {"name", "type", "precision"} <= set(delivered["per_layer"][0])
    assert record["verification"]["vs_pytorch"]["against"].endswith("PyTorch was not rerun")
    assert (artifact / "timing.cache").is_file() and record["options"]["timing_cache"].endswith(
        "timing.cache"
    )
    assert record["options"]["workspace_gib"] > 0
    assert any("workspace limit" in m for m in messages)
    rebuilt = build_artifact(BuildRequest(options, artifacts=artifact, force=True), progress=messages.append)
    assert rebuilt and any(m.startswith("reusing the timing cache") for m in messages)


def test_an_fp32_only_engine_labelled_fp16_is_refused(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch)
    shutil.copyfile(artifact / "model.onnx", artifact / "model.fp16.onnx")  # FP32 graph, FP16 name
    record_files(artifact, read_manifest(artifact), ["model.fp16.onnx"])
    code, _, err = run("trt", "--artifacts", str(artifact), "--fp16", "--max-size", "96x128")
    assert_one_line_error(code, err, "no layer runs in FP16", exit_code=2, after_progress=True)
    assert not (artifact / engine_file_name("fp16")).exists()


def test_a_real_fp16_build_delivers_fp16_layers(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from segexport.quantize import QuantizeRequest, quantize_artifact

    quantize_artifact(QuantizeRequest(artifacts=artifact, fp16=True, int8=False, eval_images=2))
    install(monkeypatch)
    options = BuildOptions(precision="fp16", max_size=(96, 128), max_batch=2)
    try:
        manifest = build_artifact(BuildRequest(options, artifacts=artifact))
    except SegexportError as error:  # random weights may miss FP16's agreement: not this test's point
        assert "no layer runs" not in str(error)
        return
    assert manifest["engines"][engine_file_name("fp16")]["delivered"]["precisions"].get("fp16", 0) > 0


def test_trt_passes_calib_to_the_int8_stage_it_runs_first(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import segexport.quantize

    seen: dict[str, Any] = {}

    def fake(request: Any, progress: Any = None) -> None:
        seen["calib"] = request.calib
        raise SegexportError("stopped here")

    monkeypatch.setattr(segexport.quantize, "quantize_artifact", fake)
    code, _, err = run("trt", "--artifacts", str(artifact), "--int8", "--calib", "my-images")
    assert code == 2 and "stopped here" in err
    assert seen == {"calib": "my-images"}
