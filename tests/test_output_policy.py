"""The one output policy (issue 27): no command's `--force` loses what a user owns.

Each case failed on the code before `segexport.runtime.outputs`: the user's folder, input,
artifact or file was deleted or replaced (or the refusal came only after the model loaded).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from segexport.data import SyntheticScenes
from segexport.errors import SegexportError
from segexport.runtime.outputs import MARKER, check_output, is_marked
from tests.clitools import assert_one_line_error, run


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for index, (image, _) in enumerate(SyntheticScenes("eval", 2, (32, 32))):
        Image.fromarray(image).save(folder / f"scene{index}.png")
    return folder


def _run(artifact: Path, source: Path | str, output: Path | str, *extra: str) -> tuple[int, str, str]:
    return run(
        "run", "--artifacts", str(artifact), "--input", str(source), "--output", str(output),
        "--threads", "1", *extra,
    )  # fmt: skip


def test_force_never_deletes_a_users_folder(small_artifact: Path, images: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    code, _, stderr = _run(small_artifact, images, mine, "--force")
    assert_one_line_error(code, stderr, f"holds no {MARKER}")
    assert (mine / "thesis.txt").read_text() == "years of work"


def test_force_replaces_an_output_run_wrote(small_artifact: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run(small_artifact, images, out)[0] == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["command"] == "run" and "written" in marker
    (out / "masks" / "scene0.png").unlink()
    code, _, stderr = _run(small_artifact, images, out, "--force")
    assert code == 0, stderr
    assert (out / "masks" / "scene0.png").is_file() and is_marked(out)


@pytest.mark.parametrize("where", ["input", "inside-input", "artifact", "inside-artifact", "cwd"])
def test_run_output_over_what_it_reads_is_refused(
    small_artifact: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    artifact = tmp_path / "art"
    shutil.copytree(small_artifact, artifact)
    (images / MARKER).write_text('{"command": "run"}')  # even a marked input is never replaced
    output = {
        "input": images,
        "inside-input": images / "masks",
        "artifact": artifact,
        "inside-artifact": artifact / "masks",
        "cwd": Path("."),
    }[where]
    monkeypatch.chdir(images if where == "cwd" else tmp_path)
    before = sorted(p.name for p in images.iterdir()) + sorted(p.name for p in artifact.iterdir())
    code, _, stderr = _run(artifact, images, output, "--force")
    assert_one_line_error(code, stderr, "--output")
    assert "reads" in stderr or "current directory" in stderr
    assert sorted(p.name for p in images.iterdir()) + sorted(p.name for p in artifact.iterdir()) == before


def test_a_video_output_over_its_input_is_refused(small_artifact: Path, tmp_path: Path) -> None:
    video = tmp_path / "v.mkv"
    video.write_bytes(b"the user's only copy")
    code, _, stderr = _run(small_artifact, video, video, "--force")
    assert_one_line_error(code, stderr, "which this command reads")
    assert video.read_bytes() == b"the user's only copy"


def test_force_never_replaces_a_symlink(small_artifact: Path, images: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / MARKER).write_text('{"command": "run"}')
    link = tmp_path / "link"
    link.symlink_to(target)
    code, _, stderr = _run(small_artifact, images, link, "--force")
    assert_one_line_error(code, stderr, "symbolic link")
    assert link.is_symlink()


def test_the_refusal_comes_before_the_model_loads(images: Path, tmp_path: Path) -> None:
    """A bad --output is named even when the artifact is missing: nothing ran first."""
    mine = tmp_path / "mine"
    mine.mkdir()
    code, _, stderr = _run(tmp_path / "no-artifact", images, mine, "--force")
    assert_one_line_error(code, stderr, f"holds no {MARKER}")


def test_triton_force_keeps_a_users_folder_and_the_source_artifact(
    small_artifact: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / "X").mkdir(parents=True)
    (repo / "X" / "notes.txt").write_text("mine")
    code, _, stderr = run(
        "triton",
        "--artifacts",
        str(small_artifact),
        "--repo",
        str(repo),
        "--name",
        "X",
        "--kind",
        "cpu",
        "--force",
    )
    assert_one_line_error(code, stderr, f"holds no {MARKER}")
    assert (repo / "X" / "notes.txt").read_text() == "mine"
    artifact = tmp_path / "art"
    shutil.copytree(small_artifact, artifact)
    code, _, stderr = run(
        "triton",
        "--artifacts",
        str(artifact),
        "--repo",
        str(tmp_path),
        "--name",
        "art",
        "--kind",
        "cpu",
        "--force",
    )
    assert_one_line_error(code, stderr, "which this command reads")
    assert (artifact / "manifest.json").is_file() and not (artifact / "config.pbtxt").exists()


def test_verify_report_never_lands_on_the_manifest(small_artifact: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "art"
    shutil.copytree(small_artifact, artifact)
    manifest = (artifact / "manifest.json").read_bytes()
    code, _, stderr = run("verify", "--artifacts", str(artifact), "--report", str(artifact / "manifest.md"))
    assert_one_line_error(code, stderr, "which this command reads")
    assert (artifact / "manifest.json").read_bytes() == manifest


def test_bench_plot_may_not_go_into_the_data_folder(tmp_path: Path) -> None:
    from segexport.bench import BenchRequest, bench_reads
    from segexport.bench.report import check_outputs

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    request = BenchRequest(artifacts=tmp_path / "art", data=str(data))
    with pytest.raises(SegexportError, match="which this command reads"):
        check_outputs(None, data / "images" / "plot.png", False, bench_reads(request))


def test_train_force_replaces_only_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "weights.safetensors"
    out.write_bytes(b"not a checkpoint segexport wrote")
    code, _, stderr = run("train", "--model", "unet", "--epochs", "1", "--out", str(out), "--force")
    assert_one_line_error(code, stderr, "was not written by segexport")
    assert out.read_bytes() == b"not a checkpoint segexport wrote"


def test_file_outputs_replace_only_regular_files(tmp_path: Path) -> None:
    fifo = tmp_path / "out.mp4"
    os.mkfifo(fifo)
    with pytest.raises(SegexportError, match="not a regular file"):
        check_output(fifo, True, directory=False)
    with pytest.raises(SegexportError, match="a directory"):
        check_output(tmp_path, True, directory=False, option="--report")
    with pytest.raises(SegexportError, match="filesystem root"):
        check_output(Path("/"), True, directory=True)
