"""Artifact directories: vouched model files open, tampered or unlisted ones are refused,
staged writes are all-or-nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from segexport.errors import SegexportError
from segexport.runtime import open_artifact
from segexport.runtime.artifacts import read_manifest, staged_directory, vouched_path


def test_open_artifact_runs_vouched_model(small_artifact: Path) -> None:
    import numpy as np

    runner, manifest = open_artifact(small_artifact)
    out = runner.infer({"image": np.zeros((3, 3, 64, 96), dtype=np.float32)})
    assert out["logits"].shape == (3, manifest["model"]["num_classes"], 64, 96)


def test_tampered_model_is_refused(tmp_path: Path, small_artifact: Path) -> None:
    copy = tmp_path / "a"
    shutil.copytree(small_artifact, copy)
    with (copy / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(SegexportError, match="does not match the manifest"):
        open_artifact(copy)


def test_unlisted_file_is_refused(tmp_path: Path, small_artifact: Path) -> None:
    copy = tmp_path / "a"
    shutil.copytree(small_artifact, copy)
    shutil.copy(copy / "model.onnx", copy / "other.onnx")
    with pytest.raises(SegexportError, match="not listed"):
        vouched_path(copy, "other.onnx")


def test_corrupt_onnx_with_matching_checksum_gets_a_clear_error(tmp_path: Path, small_artifact: Path) -> None:
    from segexport.runtime.artifacts import describe_files

    copy = tmp_path / "a"
    shutil.copytree(small_artifact, copy)
    (copy / "model.onnx").write_bytes(b"this is not onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"] = describe_files(copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SegexportError, match="ONNX Runtime cannot load it"):
        open_artifact(copy)


def test_missing_or_broken_manifest(tmp_path: Path) -> None:
    with pytest.raises(SegexportError, match=r"no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(SegexportError, match="unreadable manifest"):
        read_manifest(tmp_path)


def test_staged_directory_is_all_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "art"
    with pytest.raises(RuntimeError), staged_directory(target, force=False) as staging:
        (staging / "half.onnx").write_text("partial")
        raise RuntimeError("export crashed")
    assert list(tmp_path.iterdir()) == []
    with staged_directory(target, force=False) as staging:
        (staging / "model.onnx").write_text("v1")
    assert (target / "model.onnx").read_text() == "v1"
    with pytest.raises(SegexportError, match="already exists"), staged_directory(target, force=False):
        pass
    with staged_directory(target, force=True) as staging:
        (staging / "model.onnx").write_text("v2")
    assert (target / "model.onnx").read_text() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_written_files_get_the_usual_modes(tmp_path: Path) -> None:
    import os
    import stat

    from segexport.runtime.artifacts import write_json_atomic

    mask = os.umask(0)
    os.umask(mask)
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~mask
    with staged_directory(tmp_path / "art", force=False) as staging:
        (staging / "f").write_text("x")
    assert stat.S_IMODE((tmp_path / "art").stat().st_mode) == 0o777 & ~mask
