"""`segexport run`: images, folders and videos in; masks at the input's size out; one-line errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segexport.data import SyntheticScenes, read_mask
from segexport.runtime.segmenter import Segmenter
from tests.clitools import assert_one_line_error, run

needs_video = pytest.mark.skipif(
    importlib.util.find_spec("av") is None, reason="PyAV (the 'video' extra) is not installed"
)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for index, (image, _) in enumerate(SyntheticScenes("eval", 3, (37, 53))):
        Image.fromarray(image).save(folder / f"scene{index}.png")
    Image.fromarray(SyntheticScenes("eval", 1, (71, 33))[0][0]).save(folder / "tall.jpg")
    return folder


def test_a_folder_gives_palette_masks_and_overlays_at_input_size(
    small_artifact: Path, image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, stdout, _ = run(
        "run", "--artifacts", str(small_artifact), "--input", str(image_folder), "--output", str(out),
        "--overlay", "--batch", "2", "--threads", "1", "--json",
    )  # fmt: skip
    assert code == 0
    summary = json.loads(stdout)
    assert summary["ok"] and summary["frames"] == 4 and summary["backend"] == "onnxruntime-cpu"
    seg = Segmenter.load(small_artifact, threads=1)
    for source in sorted(image_folder.iterdir()):
        mask = read_mask(out / "masks" / f"{source.stem}.png")
        np.testing.assert_array_equal(mask, seg(source))
        with Image.open(out / "overlays" / f"{source.stem}.png") as overlay:
            assert overlay.size == Image.open(source).size
    with Image.open(out / "masks" / "scene0.png") as picture:
        assert picture.mode == "P"


def test_existing_output_needs_force(small_artifact: Path, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, stderr = run(
        "run", "--artifacts", str(small_artifact), "--input", str(image_folder), "--output", str(out)
    )
    assert_one_line_error(code, stderr, "already exists", after_progress=True)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda d: d / "missing.png", "no such file"),
        (lambda d: d, "holds no images"),
        (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "not an image"),
    ],
)
def test_bad_inputs_get_one_line(
    small_artifact: Path, tmp_path: Path, make_input: object, message: str
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    path = make_input(source)  # type: ignore[operator]
    out = tmp_path / "out"
    code, _, stderr = run(
        "run", "--artifacts", str(small_artifact), "--input", str(path), "--output", str(out)
    )
    assert_one_line_error(code, stderr, message, after_progress=True)
    assert not out.exists()


def test_an_unreadable_image_leaves_no_half_written_output(small_artifact: Path, tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(source / "a.png")
    (source / "b.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code, _, stderr = run(
        "run", "--artifacts", str(small_artifact), "--input", str(source), "--output", str(out)
    )
    assert_one_line_error(code, stderr, "unreadable image", after_progress=True)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["in"]


@needs_video
@pytest.mark.parametrize("overlay", [False, True])
def test_a_video_gives_a_video_of_the_same_size_and_length(
    small_artifact: Path, tmp_path: Path, overlay: bool
) -> None:
    import av

    from segexport.runtime.media import VideoWriter

    clip = tmp_path / "clip.mp4"
    writer = VideoWriter(clip, 10, "mp4")
    for image, _ in SyntheticScenes("eval", 6, (48, 64)):
        writer.write(image)
    writer.close()
    out = tmp_path / "masks.mp4"
    args = ["--overlay"] if overlay else []
    code, stdout, _ = run(
        "run", "--artifacts", str(small_artifact), "--input", str(clip), "--output", str(out), "--json", *args
    )
    assert code == 0 and json.loads(stdout)["frames"] == 6
    with av.open(str(out)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (48, 64, 3)


@needs_video
def test_a_video_that_cannot_be_opened_gets_one_line(small_artifact: Path, tmp_path: Path) -> None:
    clip = tmp_path / "broken.mp4"
    clip.write_bytes(b"\x00" * 100)
    out = tmp_path / "out.mp4"
    code, _, stderr = run(
        "run", "--artifacts", str(small_artifact), "--input", str(clip), "--output", str(out)
    )
    assert_one_line_error(code, stderr, "cannot open the video", after_progress=True)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4"]


@needs_video
@pytest.mark.parametrize("example", ["ros2_node.py", "opencv_loop.py"])
def test_examples_run_on_a_video_file(small_artifact: Path, tmp_path: Path, example: str) -> None:
    import subprocess
    import sys

    from segexport.runtime.media import VideoWriter

    if example == "opencv_loop.py" and importlib.util.find_spec("cv2") is None:
        pytest.skip("the OpenCV example needs opencv-python, which is not installed")
    clip = tmp_path / "clip.mp4"
    writer = VideoWriter(clip, 10, "mp4")
    for image, _ in SyntheticScenes("eval", 4, (48, 64)):
        writer.write(image)
    writer.close()
    script = Path(__file__).resolve().parents[1] / "examples" / example
    source = (
        ["--video", str(clip)]
        if example == "ros2_node.py"
        else ["--source", str(clip), "--out", str(tmp_path / "o.mp4")]
    )
    result = subprocess.run(
        [sys.executable, str(script), "--artifacts", str(small_artifact), *source],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "4 masks" in result.stdout or "4 frames" in result.stdout, result.stdout


def test_colorize_and_overlay_match_their_definitions() -> None:
    """The fast paths (np.take, weights per class) give exactly the arithmetic the docstrings
    state: palette[id % len(palette)], and image*(1-w) + colour*w rounded, w = 0 for black."""
    from segexport.runtime.media import colorize, default_palette, overlay

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    for palette in (None, default_palette()[:5]):
        rows = default_palette() if palette is None else palette
        for ids in (rng.integers(0, 300, (13, 17)), rng.integers(0, 256, (13, 17)).astype(np.uint8)):
            expected = rows[ids.astype(np.int64) % len(rows)]
            np.testing.assert_array_equal(colorize(ids, palette), expected)
            weight = np.where(expected.any(axis=2, keepdims=True), np.float32(0.3), np.float32(0.0))
            blended = image.astype(np.float32) * (1 - weight) + expected.astype(np.float32) * weight
            np.testing.assert_array_equal(overlay(image, ids, 0.3, palette), (blended + 0.5).astype(np.uint8))
