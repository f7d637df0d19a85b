"""The newcomer's first hour, scripted: export the demo, run it on a video and a photo.

The video gives exact class ids (numbered PNG label maps equal to `Segmenter`'s masks, or a
lossless FFV1 video), a colour video and classes.json; one image with `--output one.png`
writes that file; paths that do not fit the input are refused before the model loads.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segexport.data import SyntheticScenes
from segexport.runtime.media import overlay, save_mask_png
from segexport.runtime.run_outputs import plan_run
from segexport.runtime.segmenter import Segmenter
from tests.clitools import assert_one_line_error, run

needs_video = pytest.mark.skipif(
    importlib.util.find_spec("av") is None, reason="needs PyAV (the video extra)"
)
LOADED = "backend:"  # the first line a loaded model prints


def _video(path: Path, frames: int, size: tuple[int, int]) -> list[np.ndarray]:
    import av

    pictures = [image for image, _ in SyntheticScenes("eval", frames, size)]
    with av.open(str(path), "w") as video:
        stream = video.add_stream("libx264", rate=30)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for picture in pictures:
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                video.mux(packet)
        for packet in stream.encode():
            video.mux(packet)
    return pictures


def _decoded(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as video:
        return [frame.to_ndarray() for frame in video.decode(video=0)]


@pytest.mark.slow
@needs_video
def test_the_newcomer_path(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])
        ),
    }

    def segexport(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "segexport", *args]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)

    exported = segexport("onnx", "--weights", "demo", "--out", "art", "--threads", "1")
    assert exported.returncode == 0, exported.stderr
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["export_shape"] == "1x128x128"  # the demo checkpoint's training size

    _video(tmp_path / "street.mp4", 60, (240, 320))
    ran = segexport(
        "run", "--artifacts", "art", "--input", "street.mp4", "--output", "street-masks.mp4", "--save-ids"
    )
    assert ran.returncode == 0, ran.stderr
    assert (
        ran.stderr.startswith("backend: onnxruntime-cpu, model.onnx") and "resize=keep-aspect" in ran.stderr
    )
    ids = sorted((tmp_path / "street-masks-ids").glob("frame_*.png"))
    assert len(ids) == 60 and ids[0].name == "frame_000000.png"
    classes = json.loads((tmp_path / "street-masks-ids" / "classes.json").read_text())["classes"]
    assert [c["name"] for c in classes][:2] == ["background", "stripes"]
    assert (tmp_path / "street-masks.classes.json").is_file() and (
        tmp_path / "street-masks.legend.png"
    ).is_file()
    assert len(_decoded(tmp_path / "street-masks.mp4")) == 60

    import av

    with av.open(str(tmp_path / "street.mp4")) as video:
        decoded = [frame.to_ndarray(format="rgb24") for frame in video.decode(video=0)]
    with Segmenter.load(tmp_path / "art", resize="keep-aspect", threads=1) as seg:
        for frame, path in zip(decoded, ids, strict=True):
            np.testing.assert_array_equal(np.asarray(Image.open(path)), seg(frame, color="rgb"))

    Image.fromarray(decoded[0]).save(tmp_path / "photo.png")
    one = segexport("run", "--artifacts", "art", "--input", "photo.png", "--output", "one.png")
    assert one.returncode == 0, one.stderr
    with Segmenter.load(tmp_path / "art", threads=1) as seg:
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "one.png")), seg(tmp_path / "photo.png")
        )

    for source, output in (("photo.png", "x.mp4"), ("street.mp4", "masks"), ("photo.png", "x.jpg")):
        refused = segexport("run", "--artifacts", "art", "--input", source, "--output", output)
        assert_one_line_error(refused.returncode, refused.stderr, f"--output {output}")
        assert LOADED not in refused.stderr and not (tmp_path / output).exists()


@needs_video
def test_lossless_ids_video_gives_the_ids_back(small_artifact: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    _video(clip, 5, (48, 64))
    code, _, stderr = run(
        "run", "--artifacts", str(small_artifact), "--input", str(clip), "--output", str(tmp_path / "c.mp4"),
        "--save-ids", str(tmp_path / "ids.mkv"), "--threads", "1",
    )  # fmt: skip
    assert code == 0, stderr
    masks = _decoded(tmp_path / "ids.mkv")
    import av

    with av.open(str(clip)) as video:
        frames = [frame.to_ndarray(format="rgb24") for frame in video.decode(video=0)]
    with Segmenter.load(small_artifact, resize="keep-aspect", threads=1) as seg:
        assert len(masks) == len(frames) == 5
        for mask, frame in zip(masks, frames, strict=True):
            np.testing.assert_array_equal(mask, seg(frame, color="rgb"))


@pytest.mark.parametrize(
    ("source", "output", "save_ids", "message"),
    [
        ("photo.png", "x.mp4", None, "a video file needs a video input"),
        ("photos", "x.png", None, "a folder input writes a folder"),
        ("photo.png", "x.jpg", None, "masks are PNG label maps"),
        ("clip.mp4", "masks", None, "is written as a video file"),
        ("clip.mp4", "x.mp4", "ids.mp4", "lossy video cannot carry class ids"),
        ("missing.png", "x.png", None, "no such file"),
        ("taken.png", "taken-out.png", None, "already exists; pass --force"),
    ],
)
def test_outputs_that_do_not_fit_are_refused_before_loading(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    output: str,
    save_ids: str | None,
    message: str,
) -> None:
    from segexport.errors import SegexportError

    (tmp_path / "photos").mkdir()
    for name in ("photo.png", "taken.png", "taken-out.png", "clip.mp4"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SegexportError, match=message):
        plan_run(source, Path(output), save_ids)


def test_an_image_to_a_png_plans_one_file_with_its_legend(tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(b"")
    plan = plan_run(str(tmp_path / "photo.png"), tmp_path / "one.png")
    assert plan.target == "file"
    assert [p.name for p in plan.written()] == ["one.png", "one.classes.json", "one.legend.png"]


def test_label_maps_keep_ids_past_255_classes(tmp_path: Path) -> None:
    ids = np.array([[0, 255], [256, 4000]], dtype=np.int64)
    save_mask_png(ids, tmp_path / "wide.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "wide.png")), ids)
    save_mask_png(ids.clip(0, 255), tmp_path / "narrow.png")
    with Image.open(tmp_path / "narrow.png") as picture:
        assert picture.mode == "P"
        np.testing.assert_array_equal(np.asarray(picture), ids.clip(0, 255))


def test_overlays_leave_unlabelled_pixels_alone() -> None:
    image = np.full((2, 2, 3), 200, dtype=np.uint8)
    mask = np.array([[0, 1], [0, 1]])
    blended = overlay(image, mask, alpha=0.5)
    np.testing.assert_array_equal(blended[:, 0], image[:, 0])  # class 0: black in the palette
    assert not np.array_equal(blended[:, 1], image[:, 1])


def test_export_size_defaults_to_the_checkpoints_training_size(tmp_path: Path) -> None:
    from segexport.export import ExportRequest
    from segexport.export.plan import plan_export

    trained = plan_export(ExportRequest("segformer-b0", weights="demo", out_dir=tmp_path / "a"))
    assert (trained.export_shape.height, trained.export_shape.width) == (128, 128)
    untrained = plan_export(ExportRequest("segformer-b0", out_dir=tmp_path / "b"))
    assert (untrained.export_shape.height, untrained.export_shape.width) == (512, 512)  # the model's
