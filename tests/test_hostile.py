"""The manifest's guarantee against hostile artifacts, and user mistakes that must cost nothing.

Each class of issue 13 has cases here: laundering (a stage re-vouching what it did not
write), names and symlinks escaping the directory, writes through symlinks, external
data, malformed manifests, `--force` and killed runs, sizes and decompression bombs,
options, read-only directories, and shapes the runtime must refuse before running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segexport.data import SYNTHETIC_CLASSES
from segexport.errors import SegexportError
from segexport.runtime import open_artifact
from segexport.runtime.artifacts import (
    atomic_write,
    check_vouched_files,
    clean_stale_partials,
    describe_files,
    read_manifest,
    staged_directory,
    vouched_bytes,
    vouched_path,
    write_json_atomic,
)
from segexport.runtime.onnx_wire import MalformedProtobuf, external_data_files
from tests.clitools import assert_one_line_error, run


@pytest.fixture
def artifact(tmp_path: Path, small_artifact: Path) -> Path:
    copy = tmp_path / "art"
    shutil.copytree(small_artifact, copy)
    return copy


def revouch(directory: Path, manifest: dict[str, Any]) -> None:
    """What an attacker who can rewrite the manifest does (outside the threat model)."""
    write_json_atomic(directory / "manifest.json", manifest)


def dead_pid() -> int:
    """The pid of a process that has exited (reaped), so nothing runs under it now."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --------------------------------------------------------------------------- laundering


def test_no_stage_vouches_a_tampered_or_unlisted_model(artifact: Path, small_weights: Path) -> None:
    """Plant a tampered vouched model and an unlisted one; run every manifest-writing stage."""
    from segexport.build import BuildOptions, BuildRequest, build_artifact, record_engine
    from segexport.export import ExportRequest, export_onnx
    from segexport.quantize import QuantizeRequest, quantize_artifact

    fast = {"calib_size": 2, "eval_images": 2}
    quantize_artifact(QuantizeRequest(artifacts=artifact, fp16=True, int8=False, **fast))
    vouched = read_manifest(artifact)
    with (artifact / "model.fp16.onnx").open("ab") as handle:  # tamper with a vouched model
        handle.write(b"\0evil")
    shutil.copy(artifact / "model.onnx", artifact / "model.planted.onnx")  # an unlisted model
    (artifact / "model.int8.onnx").write_bytes(b"planted, unlisted, under a name a stage writes")

    def assert_neither_vouched() -> None:
        files = read_manifest(artifact)["files"]
        assert files["model.fp16.onnx"] == vouched["files"]["model.fp16.onnx"]
        assert "model.planted.onnx" not in files
        with pytest.raises(SegexportError, match="does not match"):
            vouched_bytes(artifact, "model.fp16.onnx")
        with pytest.raises(SegexportError, match="not listed"):
            vouched_bytes(artifact, "model.planted.onnx")

    stages = {
        "quantize --int8": lambda: quantize_artifact(
            QuantizeRequest(artifacts=artifact, fp16=False, int8=True, **fast)
        ),
        "quantize --int8-cpu": lambda: quantize_artifact(
            QuantizeRequest(artifacts=artifact, fp16=False, int8=False, int8_cpu=True, **fast)
        ),
        "trt --fp32": lambda: build_artifact(BuildRequest(BuildOptions("fp32"), artifact, None, None, True)),
        "trt (recording the engine)": lambda: record_engine(
            artifact, read_manifest(artifact), "model.fp32.engine", b"plan", {"precision": "fp32"}
        ),
    }
    for stage, call in stages.items():
        with pytest.raises(SegexportError, match=r"changed or are missing \(model\.fp16\.onnx\)"):
            call()
        assert_neither_vouched(), stage
    code, _, stderr = run("quantize", "--artifacts", str(artifact), "--int8")
    assert_one_line_error(code, stderr, "model.fp16.onnx")
    assert_neither_vouched()

    # Rewriting the tampered file is allowed (it is the stage's own output), and only what
    # the stage wrote becomes vouched: the planted model stays unlisted.
    quantize_artifact(QuantizeRequest(artifacts=artifact, fp16=True, int8=True, force=True, **fast))
    files = read_manifest(artifact)["files"]
    assert set(files) == {"model.onnx", "reference.npz", "model.fp16.onnx", "model.int8.onnx", "calib.json"}
    for name in files:
        vouched_bytes(artifact, name)  # all match what is on disk now
    assert not (artifact / "model.fp16.onnx").read_bytes().endswith(b"\0evil")  # rewritten, not carried
    record_engine(artifact, read_manifest(artifact), "model.fp32.engine", b"plan", {"precision": "fp32"})
    assert "model.planted.onnx" not in read_manifest(artifact)["files"]
    assert "model.fp32.engine" in read_manifest(artifact)["engines"]

    # Exporting over the directory starts from empty: nothing planted survives.
    export_onnx(
        ExportRequest("unet-small", size=(64, 64), weights=small_weights, out_dir=artifact, force=True)
    )
    assert sorted(p.name for p in artifact.iterdir()) == ["manifest.json", "model.onnx", "reference.npz"]


def test_report_files_are_not_vouched(artifact: Path) -> None:
    """Files a stage did not write (a verify report, a note) stay out of the manifest."""
    from segexport.build import record_engine

    (artifact / "verify_report.md").write_text("# report")
    record_engine(artifact, read_manifest(artifact), "model.fp16.engine", b"plan", {"precision": "fp16"})
    assert set(read_manifest(artifact)["files"]) == {"model.onnx", "reference.npz", "model.fp16.engine"}


def test_a_file_changed_while_a_stage_ran_is_not_carried_forward(artifact: Path) -> None:
    from segexport.build import record_engine

    manifest = read_manifest(artifact)
    (artifact / "model.onnx").write_bytes(b"swapped mid-run")
    with pytest.raises(SegexportError, match=r"changed or are missing \(model\.onnx\)"):
        record_engine(artifact, manifest, "model.fp16.engine", b"plan", {})
    assert "model.fp16.engine" not in read_manifest(artifact)["files"]


# --------------------------------------------------------------------------- containment


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/passwd", "sub/model.onnx", "..", ".", "a\\b.onnx"])
def test_names_that_escape_the_directory_are_refused(artifact: Path, name: str) -> None:
    manifest = read_manifest(artifact)
    entry = manifest["files"]["model.onnx"]
    manifest["files"][name] = entry
    revouch(artifact, manifest)
    with pytest.raises(SegexportError, match=r"invalid manifest: field 'files\..*' is not a plain file name"):
        read_manifest(artifact)
    with pytest.raises(SegexportError, match="not a plain file name"):
        vouched_bytes(artifact, name, manifest)  # a manifest handed over in memory is checked too


def test_manifest_cannot_list_itself(artifact: Path) -> None:
    manifest = read_manifest(artifact)
    manifest["files"]["manifest.json"] = manifest["files"]["model.onnx"]
    revouch(artifact, manifest)
    with pytest.raises(SegexportError, match=r"field 'files\.manifest\.json' is the manifest itself"):
        read_manifest(artifact)


def test_a_planted_huge_file_is_refused_without_reading_it(artifact: Path) -> None:
    with (artifact / "model.onnx").open("r+b") as handle:
        handle.truncate(1 << 40)  # a sparse terabyte: reading it would exhaust memory
    with pytest.raises(SegexportError, match=r"1099511627776 bytes does not match the manifest's \d+"):
        open_artifact(artifact)
    (artifact / "manifest.json").write_bytes(b" " * (17 << 20))
    with pytest.raises(SegexportError, match="a manifest is a few KB"):
        read_manifest(artifact)


def test_symlinked_model_is_refused_even_when_its_target_matches(tmp_path: Path, artifact: Path) -> None:
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(artifact / "model.onnx", outside)
    (artifact / "model.onnx").symlink_to(outside)  # same bytes, so the sha256 would match
    with pytest.raises(SegexportError, match="symbolic link"):
        open_artifact(artifact)
    code, _, stderr = run("verify", "--artifacts", str(artifact), "--against", "onnx", "--data", "random")
    assert_one_line_error(code, stderr, "symbolic link")


def test_symlinked_manifest_and_special_files_are_refused(tmp_path: Path, artifact: Path) -> None:
    shutil.move(artifact / "manifest.json", tmp_path / "manifest.json")
    (artifact / "manifest.json").symlink_to(tmp_path / "manifest.json")
    with pytest.raises(SegexportError, match="symbolic link"):
        read_manifest(artifact)
    (artifact / "manifest.json").unlink()
    shutil.move(tmp_path / "manifest.json", artifact / "manifest.json")
    (artifact / "model.onnx").unlink()
    os.mkfifo(artifact / "model.onnx")  # must not hang the open
    with pytest.raises(SegexportError, match="not a regular file"):
        open_artifact(artifact)
    (artifact / "model.onnx").unlink()
    (artifact / "model.onnx").mkdir()
    with pytest.raises(SegexportError, match="not a regular file"):
        open_artifact(artifact)


def test_loader_gets_the_checked_bytes(artifact: Path) -> None:
    """vouched_bytes returns the bytes it hashed; the runner is built from those bytes,
    so swapping the file afterwards changes nothing that runs."""
    from segexport.runtime.runners import OnnxRuntimeRunner

    data = vouched_bytes(artifact, "model.onnx")
    (artifact / "model.onnx").write_bytes(b"swapped after the check")
    runner = OnnxRuntimeRunner(data, manifest=read_manifest(artifact), name="model.onnx")
    out = runner.infer({"image": np.zeros((1, 3, 64, 64), np.float32)})
    assert out["logits"].shape == (1, 2, 64, 64)


# --------------------------------------------------------------------------- writes


def test_atomic_write_replaces_a_planted_symlink_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    directory = tmp_path / "art"
    directory.mkdir()
    (directory / "calib.json").symlink_to(victim)
    atomic_write(directory / "calib.json", lambda temp: temp.write_text("{}"))
    assert victim.read_text() == "precious"
    assert not (directory / "calib.json").is_symlink()
    assert (directory / "calib.json").read_text() == "{}"
    with pytest.raises(SegexportError, match="already exists"):
        atomic_write(directory / "calib.json", lambda temp: temp.write_text("x"), force=False)


@pytest.mark.slow
def test_quantize_writes_calib_json_over_a_symlink_not_through_it(tmp_path: Path, artifact: Path) -> None:
    from segexport.quantize import QuantizeRequest, quantize_artifact

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (artifact / "calib.json").symlink_to(victim)
    quantize_artifact(QuantizeRequest(artifacts=artifact, fp16=False, int8=True, calib_size=2, eval_images=2))
    assert victim.read_text() == "precious"
    assert not (artifact / "calib.json").is_symlink()
    vouched_bytes(artifact, "calib.json")


# --------------------------------------------------------------------------- external data


def _model_with_external_data(directory: Path, in_attribute: bool = False) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones(4, np.float32), "w")
    if in_attribute:  # a Constant node's tensor: nested one level deeper than an initializer
        (directory / "weights.bin").write_bytes(weight.raw_data)
        onnx.external_data_helper.set_external_data(weight, location="weights.bin")
        weight.data_location = TensorProto.EXTERNAL
        weight.ClearField("raw_data")
        nodes = [
            helper.make_node("Constant", [], ["w"], value=weight),
            helper.make_node("Add", ["x", "w"], ["y"]),
        ]
        initializers = []
    else:
        nodes, initializers = [helper.make_node("Add", ["x", "w"], ["y"])], [weight]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = directory / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


@pytest.mark.parametrize("in_attribute", [False, True])
def test_external_data_is_found_without_onnx(tmp_path: Path, in_attribute: bool) -> None:
    path = _model_with_external_data(tmp_path, in_attribute)
    assert external_data_files(path.read_bytes()) == ["weights.bin"]


def test_self_contained_models_have_no_external_data(small_artifact: Path) -> None:
    assert external_data_files((small_artifact / "model.onnx").read_bytes()) == []
    with pytest.raises(MalformedProtobuf):
        external_data_files(b"\x0a\xff\xff\xff\xff\x0f")  # a length past the end


def test_external_data_is_never_vouched_or_loaded(tmp_path: Path, artifact: Path) -> None:
    (artifact / "model.onnx").unlink()
    _model_with_external_data(artifact)
    with pytest.raises(SegexportError, match=r"refers to external data \(weights.bin\)"):
        describe_files(artifact, ["model.onnx"])
    # Even a manifest rewritten to vouch for it (beyond the threat model) does not load it.
    manifest = read_manifest(artifact)
    data = (artifact / "model.onnx").read_bytes()
    import hashlib

    manifest["files"]["model.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    revouch(artifact, manifest)
    with pytest.raises(SegexportError, match="refers to external data"):
        open_artifact(artifact)


# --------------------------------------------------------------------------- schema


def _break(manifest: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    target = manifest
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("files", ["model.onnx"], "files"),
        ("files.model.onnx", "abc", "files.model.onnx"),
        ("schema_version", KeyError, "schema_version"),
        ("schema_version", "1", "schema_version"),
        ("schema_version", 99, "schema_version"),
        ("model", KeyError, "model"),
        ("model.num_classes", "2", "model.num_classes"),
        ("model.num_classes", True, "model.num_classes"),
        ("model.class_names", ["only one"], "model.class_names"),
        ("model.weights", "x.pt", "model.weights"),
        ("inputs", {"image": 1}, "inputs"),
        ("dynamic_axes", {"batch": "1..16"}, "dynamic_axes.batch"),
        ("dynamic_axes", {"batch": [16, 1]}, "dynamic_axes.batch"),
        ("dynamic_axes", {"batch": [0, 1]}, "dynamic_axes.batch"),
        ("size_rule", {"divisible_by": 0}, "size_rule.divisible_by"),
        ("preprocessing.std", [0.2, 0.0, 0.2], "preprocessing.std[1]"),
        ("preprocessing.mean", [0.5], "preprocessing.mean"),
        ("engines", [], "engines"),
    ],
)
def test_malformed_manifest_is_one_error_naming_the_field(
    artifact: Path, path: str, value: Any, field: str
) -> None:
    manifest = read_manifest(artifact)
    if path.startswith("files.model.onnx"):
        manifest["files"]["model.onnx"] = value
    else:
        _break(manifest, path, value)
    revouch(artifact, manifest)
    with pytest.raises(SegexportError, match=re.escape(f"field '{field}'")):
        read_manifest(artifact)
    code, _, stderr = run("verify", "--artifacts", str(artifact), "--against", "onnx")
    assert_one_line_error(code, stderr, f"field '{field}'")


def test_manifest_that_is_not_an_object_or_not_json(artifact: Path) -> None:
    for text, message in (("[1, 2]", "not a segexport manifest"), ("[" * 100000, "unreadable manifest")):
        (artifact / "manifest.json").write_text(text)
        code, _, stderr = run("quantize", "--artifacts", str(artifact))
        assert_one_line_error(code, stderr, message)


# --------------------------------------------------------------------------- --force and killed runs


def test_force_replaces_only_artifact_directories(tmp_path: Path) -> None:
    users = tmp_path / "my-folder"
    users.mkdir()
    (users / "thesis.tex").write_text("years of work")
    code, _, stderr = run("onnx", "--model", "unet-small", "--size", "64x64", "--out", str(users), "--force")
    assert_one_line_error(code, stderr, "holds no segexport manifest")
    assert (users / "thesis.tex").read_text() == "years of work"
    link = tmp_path / "link"
    link.symlink_to(users)
    with pytest.raises(SegexportError, match="symbolic link"), staged_directory(link, force=True):
        pass
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SegexportError, match="not a directory"), staged_directory(a_file, force=True):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "link", "my-folder"]


def test_out_dot_is_refused_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "manifest.json").write_text('{"files": {}}')  # even an artifact directory
    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path)):
        with (
            pytest.raises(SegexportError, match="current directory"),
            staged_directory(Path(out), force=True),
        ):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    assert [p.name for p in tmp_path.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name] == []


def test_stale_partials_of_dead_runs_are_cleaned(tmp_path: Path) -> None:
    dead, alive = dead_pid(), os.getpid()
    stale = [f".art.partial-{dead}-abc", f".art.old-{dead}-x_1", f".model.fp16.onnx.tmp-{dead}-q9"]
    live = [f".art.partial-{alive}-abc", f".model.onnx.tmp-{alive}-zz"]
    unrelated = [".hidden", ".art.partial-notapid-x", "notes.txt"]
    for index, name in enumerate(stale + live + unrelated):
        if index % 2:
            (tmp_path / name).mkdir()
            (tmp_path / name / "model.onnx").write_text("half")
        else:
            (tmp_path / name).write_text("half")
    assert sorted(clean_stale_partials(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(live + unrelated)
    with staged_directory(tmp_path / "art", force=False) as staging:
        assert staging.name.startswith(f".art.partial-{alive}-")


@pytest.mark.slow
def test_export_killed_mid_run_leaves_nothing_that_blocks_the_rerun(tmp_path: Path) -> None:
    out = tmp_path / "art"
    command = [sys.executable, "-m", "segexport", "onnx", "--model", "unet-small", "--size", "64x64"]
    process = subprocess.Popen([*command, "--out", str(out)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".art.partial-") for p in tmp_path.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline, "export never staged"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()
    rerun = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_unvouched_leftover_of_a_killed_quantize_does_not_block_the_rerun(artifact: Path) -> None:
    """A kill between writing model.fp16.onnx and the manifest leaves it unvouched: the
    rerun replaces it without --force (a vouched one still needs --force)."""
    from segexport.quantize import QuantizeRequest, quantize_artifact

    (artifact / "model.fp16.onnx").write_bytes(b"complete but never vouched")
    (artifact / f".model.fp16.onnx.tmp-{dead_pid()}-ab").write_bytes(b"half")
    messages: list[str] = []
    request = QuantizeRequest(artifacts=artifact, fp16=True, int8=False, calib_size=2, eval_images=2)
    quantize_artifact(request, progress=messages.append)
    assert any("replacing model.fp16.onnx" in m for m in messages)
    vouched_bytes(artifact, "model.fp16.onnx")
    assert not [p for p in artifact.iterdir() if ".tmp-" in p.name]
    with pytest.raises(SegexportError, match="already exists; pass --force"):
        quantize_artifact(request)


# --------------------------------------------------------------------------- sizes and images


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "99984x99984"], "Mpx at once"),
        (["--size", "512x512", "--batch", "64", "--max-batch", "64"], "Mpx at once"),
        (["--max-batch", "5000"], "--max-batch 5000 is over 1024"),
        (["--max-size", "16384x16384"], "over 8192 per side"),
    ],
)
def test_export_sizes_are_capped(tmp_path: Path, args: list[str], message: str) -> None:
    code, _, stderr = run("onnx", "--model", "unet-small", *args, "--out", str(tmp_path / "x"))
    assert_one_line_error(code, stderr, message)
    assert "--allow-large" in stderr
    assert list(tmp_path.iterdir()) == []


def test_allow_large_lifts_the_cap() -> None:
    from segexport.export import ExportRequest, plan_export

    request = ExportRequest("unet-small", size=(4096, 4096))
    with pytest.raises(SegexportError, match="--allow-large"):
        plan_export(request)
    request.allow_large = True
    assert plan_export(request).export_shape.height == 4096  # planned, not run


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A tiny PNG that claims a huge size (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [30000, 10000])  # over Pillow's error and its warning limits
def test_decompression_bomb_is_a_one_line_refusal(tmp_path: Path, side: int) -> None:
    from segexport.data import read_mask
    from segexport.runtime import read_rgb

    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, side, side)
    for reader in (read_rgb, read_mask):
        with pytest.raises(SegexportError, match=r"bomb.png: .* too large, refusing to decode it"):
            reader(bomb)


def test_bomb_in_a_data_folder_via_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    (data / "classes.txt").write_text("\n".join(SYNTHETIC_CLASSES))  # the demo checkpoint's classes
    _png_header_only(data / "images" / "a.png", 30000, 30000)
    _png_header_only(data / "masks" / "a.png", 30000, 30000)
    code, _, stderr = run("eval", "--model", "unet-small", "--weights", "demo", "--data", str(data))
    assert_one_line_error(code, stderr, "a.png: image too large")


def test_accuracy_data_is_seen_at_the_model_size(tmp_path: Path) -> None:
    from segexport.data import FolderDataset, Resized

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((300, 500, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.ones((300, 500), np.uint8)).save(tmp_path / "masks" / "a.png")
    dataset = Resized(FolderDataset.from_dirs(tmp_path / "images", tmp_path / "masks", ["a", "b"]), (64, 96))
    image, labels = dataset[0]
    assert image.shape == (64, 96, 3) and labels.shape == (64, 96) and set(np.unique(labels)) == {1}


# --------------------------------------------------------------------------- options and messages


@pytest.mark.parametrize(
    "args",
    [
        ["onnx", "--max-batch", "0"],
        ["onnx", "--threads", "0"],
        ["onnx", "--batch", "-1"],
        ["onnx", "--num-classes", "0"],
        ["onnx", "--rtol", "nan"],
        ["quantize", "--percentile", "150"],
        ["quantize", "--percentile", "0"],
        ["quantize", "--limit", "0"],
        ["quantize", "--calib-size", "0"],
        ["quantize", "--min-agreement", "1.5"],
        ["quantize", "--method", "median"],
        ["quantize", "--threads", "-2"],
        ["trt", "--opt-level", "9"],
        ["trt", "--workspace", "0"],
        ["trt", "--dla-core", "-1"],
        ["trt", "--max-batch", "0"],
        ["verify", "--min-agreement", "inf"],
        ["verify", "--rtol", "-1"],
        ["verify", "--limit", "0"],
        ["train", "--model", "unet-small", "--out", "x.safetensors", "--lr", "0"],
        ["train", "--model", "unet-small", "--out", "x.safetensors", "--seed", "-1"],
        ["train", "--model", "unet-small", "--out", "x.safetensors", "--epochs", "0"],
        ["onnx", "--no-such-option"],
        ["onnx", "--size"],
        ["no-such-command"],
    ],
)
def test_bad_options_are_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run(*args)
    assert_one_line_error(code, stderr, "")
    assert "--help" in stderr  # says where the option's rule is documented
    assert list(tmp_path.iterdir()) == []
    code, stdout, _ = run(*args, "--json")
    assert json.loads(stdout)["ok"] is False


def test_unwritable_calibration_cache_is_refused_before_calibrating(artifact: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, stderr = run("quantize", "--artifacts", str(artifact), "--calib-cache", str(blocker / "c.json"))
    assert_one_line_error(code, stderr, "--calib-cache is created there")
    with pytest.raises(SegexportError, match="cannot write"):
        atomic_write(blocker / "c.json", lambda temp: temp.write_text("{}"))


def test_api_refuses_what_the_cli_would(artifact: Path) -> None:
    from segexport.export import ExportRequest, plan_export
    from segexport.quantize import QuantizeRequest, quantize_artifact

    with pytest.raises(SegexportError, match="--max-batch must be >= 1"):
        plan_export(ExportRequest("unet-small", max_batch=0))
    with pytest.raises(SegexportError, match="--threads must be >= 1"):
        plan_export(ExportRequest("unet-small", threads=0))
    before = read_manifest(artifact)
    for bad in ({"eval_images": 0}, {"percentile": 150.0}, {"calib_size": 0}, {"min_agreement": 2.0}):
        with pytest.raises(SegexportError, match="must be"):
            quantize_artifact(QuantizeRequest(artifacts=artifact, **bad))  # type: ignore[arg-type]
    assert read_manifest(artifact) == before


def _checkpoint_with_metadata(path: Path, metadata: str) -> Path:
    from safetensors.torch import save_file

    from segexport.zoo import create_model

    state = {k: v.contiguous() for k, v in create_model("unet-small").state_dict().items()}
    save_file(state, str(path), metadata={"segexport": metadata})
    return path


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ("{not json", "metadata is not JSON"),
        ("{}", "must be a JSON object with class_names"),
        ('["a"]', "must be a JSON object with class_names"),
        ('{"class_names": ["a", "b"], "input_size": "big"}', "input_size must be [height, width]"),
    ],
)
def test_checkpoint_metadata_errors_are_one_line(tmp_path: Path, metadata: str, message: str) -> None:
    checkpoint = _checkpoint_with_metadata(tmp_path / "c.safetensors", metadata)
    code, _, stderr = run("eval", "--model", "unet-small", "--weights", str(checkpoint), "--limit", "1")
    assert_one_line_error(code, stderr, message)


def test_read_only_directories_are_refused_up_front(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check must come before the work: os.access says no (root passes any mode bits,
    so the permission is simulated; the real chmod case follows where it can run)."""
    import segexport.runtime.artifacts as artifacts_module

    real_access = os.access
    monkeypatch.setattr(
        artifacts_module.os,
        "access",
        lambda path, mode: real_access(path, mode) and not (mode & os.W_OK and Path(path) == artifact),
    )
    code, _, stderr = run("quantize", "--artifacts", str(artifact), "--fp16")
    assert_one_line_error(code, stderr, f"cannot write to {artifact}")
    code, _, stderr = run("verify", "--artifacts", str(artifact), "--against", "onnx", "--data", "random")
    assert_one_line_error(code, stderr, f"cannot write to {artifact}")
    code, _, stderr = run("trt", "--artifacts", str(artifact), "--precision", "fp32")
    assert_one_line_error(code, stderr, f"cannot write to {artifact}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories; see the test above")
def test_read_only_directory_with_real_permissions(artifact: Path) -> None:
    artifact.chmod(0o555)
    try:
        code, _, stderr = run("quantize", "--artifacts", str(artifact), "--fp16")
        assert_one_line_error(code, stderr, "cannot write to")
    finally:
        artifact.chmod(0o755)


# --------------------------------------------------------------------------- runtime shapes


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((17, 3, 64, 64), "batch 17 is outside the verified range 1..16"),
        ((1, 3, 72, 64), "height 72 is not a multiple of 16"),
        ((1, 3, 64, 2048), "width 2048 is outside the verified range 32..1024"),
        ((1, 4, 64, 64), "dimension 1 must be 3"),
        ((3, 64, 64), "has 3 dimensions"),
    ],
)
def test_runtime_refuses_shapes_outside_the_manifest(
    small_artifact: Path, shape: tuple[int, ...], message: str, capfd: pytest.CaptureFixture[str]
) -> None:
    runner, _ = open_artifact(small_artifact)
    with pytest.raises(SegexportError, match=message):
        runner.infer({"image": np.zeros(shape, np.float32)})
    assert "Concat" not in capfd.readouterr().err  # refused before ONNX Runtime ran


def test_runtime_names_missing_and_unknown_inputs(small_artifact: Path) -> None:
    runner, _ = open_artifact(small_artifact)
    with pytest.raises(SegexportError, match="no input 'img'"):
        runner.infer({"img": np.zeros((1, 3, 64, 64), np.float32)})
    with pytest.raises(SegexportError, match="missing inputs image"):
        runner.infer({})


def test_vouched_path_is_still_the_check_before_work(artifact: Path) -> None:
    assert vouched_path(artifact, "model.onnx") == artifact / "model.onnx"
    check_vouched_files(artifact, read_manifest(artifact))  # nothing changed: no error
