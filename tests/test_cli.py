"""User mistakes end in one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clitools import assert_one_line_error, run

SMALL = ["--model", "unet-small", "--size", "64x64"]


def test_zoo_json_lists_parameter_counts() -> None:
    code, out, _ = run("zoo", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["segformer-b0"]["parameters"] == pytest.approx(3.8e6, rel=0.03)
    assert rows["segformer-b5"]["parameters"] == pytest.approx(84.7e6, rel=0.03)
    assert rows["maskrcnn-mask-head"]["outputs"] == ["mask_logits"]
    assert rows["setr"]["default_input"] == "512x512"


def test_onnx_json_summary(tmp_path: Path) -> None:
    out = tmp_path / "a"
    code, stdout, stderr = run("onnx", *SMALL, "--out", str(out), "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["ok"] is True
    assert summary["model"] == "unet-small"
    assert len(summary["verification"]) == 3
    assert all(shape["passed"] for shape in summary["verification"])
    assert (out / "model.onnx").is_file() and (out / "manifest.json").is_file()
    assert "[4/4] verifying" in stderr  # progress goes to stderr, JSON alone to stdout


def test_unknown_model_suggests(tmp_path: Path) -> None:
    code, _, stderr = run("onnx", "--model", "segfromer", "--out", str(tmp_path / "x"))
    assert_one_line_error(code, stderr, "did you mean segformer")


def test_size_against_the_rule(tmp_path: Path) -> None:
    code, _, stderr = run("onnx", "--model", "unet-small", "--size", "100x100", "--out", str(tmp_path / "x"))
    assert_one_line_error(code, stderr, "divisible by its output stride 16; got 100x100")
    assert not (tmp_path / "x").exists()


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage")
    code, _, stderr = run("onnx", *SMALL, "--weights", str(bad), "--out", str(tmp_path / "x"))
    assert_one_line_error(code, stderr, "not a readable PyTorch checkpoint")
    assert not (tmp_path / "x").exists()
    assert list(tmp_path.iterdir()) == [bad]  # no staging directory left behind


def test_mismatched_checkpoint(tmp_path: Path, small_weights: Path) -> None:
    code, _, stderr = run(
        "onnx", *SMALL, "--num-classes", "5", "--weights", str(small_weights), "--out", str(tmp_path / "x")
    )
    message = "shape mismatches: final_conv.weight (2, 16, 1, 1) vs model (5, 16, 1, 1)"
    assert_one_line_error(code, stderr, message, after_progress=True)


def test_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, stderr = run("onnx", *SMALL, "--out", str(blocker / "artifact"))
    assert_one_line_error(code, stderr, "cannot write to")


def test_existing_artifact_needs_force(tmp_path: Path, small_artifact: Path) -> None:
    import shutil

    target = tmp_path / "art"
    shutil.copytree(small_artifact, target)
    before = (target / "manifest.json").read_bytes()
    code, stdout, stderr = run("onnx", *SMALL, "--out", str(target), "--json")
    assert_one_line_error(code, stderr, "already exists; pass --force")
    assert json.loads(stdout) == {"ok": False, "error": json.loads(stdout)["error"]}
    assert (target / "manifest.json").read_bytes() == before
    code, _, stderr = run("onnx", *SMALL, "--out", str(target), "--force")
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_verification_failure_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    code, _, stderr = run("onnx", *SMALL, "--out", str(tmp_path / "x"), "--rtol", "1e-12")
    assert_one_line_error(code, stderr, "differs from PyTorch", exit_code=1, after_progress=True)
    assert list(tmp_path.iterdir()) == []


def test_bad_size_syntax_is_a_usage_error() -> None:
    code, _, stderr = run("onnx", "--size", "big")
    assert_one_line_error(code, stderr, "is not of the form HxW")


def test_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    """The real console entry point, in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-m", "segexport", "onnx", "--model", "nosuchmodel", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("segexport: error: unknown model 'nosuchmodel'")
    assert "Traceback" not in result.stderr
