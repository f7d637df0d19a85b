"""Hostile and damaged inputs (issue 27): special files, camera indices, thread counts, damaged
videos, EXIF orientation and hand-edited palettes. Each case was a hang, a traceback, a crash
or a silently wrong output on the code before it.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from segexport.data import SyntheticScenes
from segexport.errors import SegexportError
from segexport.runtime.artifacts import read_manifest, write_json_atomic
from segexport.runtime.preprocessing import read_rgb
from segexport.runtime.segmenter import Segmenter
from tests.clitools import assert_one_line_error, run

needs_video = pytest.mark.skipif(
    importlib.util.find_spec("av") is None, reason="needs PyAV (the video extra)"
)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO named like an image. A watchdog writes EOF into it after a few seconds, so code
    that opens it (the bug) fails instead of hanging the test session."""
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "x.png"
    os.mkfifo(path)
    stop = threading.Event()

    def unblock() -> None:
        deadline = time.monotonic() + 60
        while not stop.wait(3) and time.monotonic() < deadline:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as error:
                if error.errno not in (errno.ENXIO, errno.ENOENT):
                    return

    watchdog = threading.Thread(target=unblock, daemon=True)
    watchdog.start()
    yield path
    stop.set()


def test_a_fifo_is_refused_by_run_segmenter_and_folders(
    fifo: Path, small_artifact: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, _, stderr = run(
        "run", "--artifacts", str(small_artifact), "--input", str(fifo), "--output", str(out)
    )
    assert_one_line_error(code, stderr, "not a regular file")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    with pytest.raises(SegexportError, match="not a regular file"):
        read_rgb(fifo)  # what Segmenter(path), calibration and evaluation read through
    with (
        Segmenter.load(small_artifact, threads=1) as segmenter,
        pytest.raises(SegexportError, match="regular"),
    ):
        segmenter(fifo)
    folder = ["--input", str(fifo.parent), "--output", str(tmp_path / "o2")]
    code, _, stderr = run("run", "--artifacts", str(small_artifact), *folder)
    assert_one_line_error(code, stderr, "not a regular file", after_progress=True)


def test_a_unicode_digit_is_not_a_camera_index(small_artifact: Path, tmp_path: Path) -> None:
    code, _, stderr = run(
        "run", "--artifacts", str(small_artifact), "--input", "\u00b2", "--output", str(tmp_path / "o.mp4")
    )
    assert_one_line_error(code, stderr, "no such file, folder or camera index")


def test_threads_are_capped(small_artifact: Path, tmp_path: Path) -> None:
    """100000 threads crashed ONNX Runtime (SIGSEGV): a subprocess, so the old crash fails the test."""
    image = tmp_path / "a.png"
    Image.fromarray(SyntheticScenes("eval", 1, (32, 32))[0][0]).save(image)
    command = [sys.executable, "-m", "segexport", "run", "--artifacts", str(small_artifact)]
    command += ["--input", str(image), "--output", str(tmp_path / "o"), "--threads", "100000"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert_one_line_error(done.returncode, done.stderr, "--threads")
    with pytest.raises(SegexportError, match="threads must be 1"):
        Segmenter.load(small_artifact, threads=100000)


def _video(path: Path, frames: int = 30) -> bytes:
    from segexport.runtime.media import VideoWriter

    writer = VideoWriter(path, 10, "matroska")
    scenes = SyntheticScenes("eval", frames, (32, 48))
    for index in range(frames):
        writer.write(scenes[index][0])
    writer.close()
    return path.read_bytes()


@needs_video
def test_a_truncated_video_is_exit_1_naming_the_lost_frames(small_artifact: Path, tmp_path: Path) -> None:
    data = _video(tmp_path / "whole.mkv")
    damaged = tmp_path / "damaged.mkv"
    damaged.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "masks.mkv"
    args = ["run", "--artifacts", str(small_artifact), "--input", str(damaged), "--output", str(out)]
    code, _, stderr = run(*args, "--threads", "1")
    assert_one_line_error(code, stderr, "frame(s) lost", exit_code=1, after_progress=True)
    assert not out.exists()
    code, stdout, stderr = run(*args, "--threads", "1", "--allow-damaged", "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["lost_frames"] > 0 and summary["frames"] + summary["lost_frames"] >= 29
    assert "warning" in stderr and out.is_file()
    whole = ["--input", str(tmp_path / "whole.mkv"), "--output", str(tmp_path / "whole-masks.mkv")]
    code, stdout, _ = run("run", "--artifacts", str(small_artifact), *whole, "--threads", "1", "--json")
    assert code == 0 and json.loads(stdout)["lost_frames"] == 0


def _exif_rotated(path: Path, width: int = 48, height: int = 24) -> np.ndarray:
    """A JPEG stored landscape with EXIF orientation 6: viewers show it portrait."""
    pixels = SyntheticScenes("eval", 1, (height, width))[0][0]
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, format="JPEG", exif=exif, quality=95)
    return pixels


def test_exif_orientation_is_applied_to_files_not_arrays(small_artifact: Path, tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    pixels = _exif_rotated(path)
    assert read_rgb(path).shape == (48, 24, 3)  # as viewers show it
    with Segmenter.load(small_artifact, threads=1) as segmenter:
        assert segmenter(path).shape == (48, 24)
        assert segmenter(pixels, color="rgb").shape == (24, 48)  # arrays are taken as given
    out = tmp_path / "out"
    code, _, stderr = run(
        "run", "--artifacts", str(small_artifact), "--input", str(path), "--output", str(out)
    )
    assert code == 0, stderr
    with Image.open(out / "masks" / "phone.png") as mask:
        assert mask.size == (24, 48)


@pytest.mark.parametrize(
    ("palette", "field"),
    [
        ([[300, 0, 0]], "palette[0][0]"),
        ("red", "palette"),
        ([[1, 2]], "palette[0]"),
        ([[1.5, 0, 0]], "palette"),
    ],
)
def test_a_hand_edited_palette_is_one_line(
    small_artifact: Path, tmp_path: Path, palette: Any, field: str
) -> None:
    artifact = tmp_path / "art"
    shutil.copytree(small_artifact, artifact)
    manifest = read_manifest(artifact)
    manifest["palette"] = palette
    write_json_atomic(artifact / "manifest.json", manifest)
    with pytest.raises(SegexportError, match=r"invalid manifest: field '" + field.replace("[", r"\[")):
        Segmenter.load(artifact, threads=1)


@pytest.mark.parametrize(("option", "value"), [("--runs", "1000000000"), ("--warmup", "1000000000"),
                                               ("--limit", "1000000000")])  # fmt: skip
def test_bench_counts_are_bounded(small_artifact: Path, option: str, value: str) -> None:
    code, _, stderr = run("bench", "--artifacts", str(small_artifact), option, value)
    assert_one_line_error(code, stderr, f"{option} must be")


@pytest.mark.parametrize(
    ("mask_size", "label", "message"), [(16, 1, "but its mask is"), (32, 50, "label 50")]
)
def test_bench_refuses_a_bad_labelled_folder_up_front(
    small_artifact: Path, tmp_path: Path, mask_size: int, label: int, message: str
) -> None:
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    image = SyntheticScenes("eval", 1, (32, 32))[0][0]
    Image.fromarray(image).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.full((mask_size, mask_size), label, np.uint8), mode="L").save(
        tmp_path / "masks" / "a.png"
    )
    classes = read_manifest(small_artifact)["model"]["class_names"]
    (tmp_path / "classes.txt").write_text("\n".join(classes))
    code, _, stderr = run(
        "bench", "--artifacts", str(small_artifact), "--data", str(tmp_path), "--formats", "onnx-fp32",
        "--backends", "ort-cpu", "--runs", "1", "--threads", "1",
    )  # fmt: skip
    assert_one_line_error(code, stderr, message, after_progress=True)
    assert "timing" not in stderr


def test_bench_timing_loops_respect_max_seconds() -> None:
    from segexport.bench.timing import interleaved_samples

    class Slow:
        def infer(self, feeds: dict[str, np.ndarray]) -> None:
            time.sleep(0.05)

    started = time.perf_counter()
    samples = interleaved_samples([Slow()], {}, None, 60.0, "t", started + 0.3)  # type: ignore[list-item]
    assert time.perf_counter() - started < 5 and 1 <= len(samples[0][0]) < 20


SEGFORMER = {"model_type": "segformer", "architectures": ["SegformerForSemanticSegmentation"]}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({**SEGFORMER, "num_labels": 10**9}, "num_labels"),
        ({**SEGFORMER, "id2label": ["a", "b"]}, "id2label"),
        ({**SEGFORMER, "hidden_sizes": 32}, "hidden_sizes"),
        ([SEGFORMER], "(top level)"),
        ({"architecture": "vit_base_patch16_224", "pretrained_cfg": "x"}, "pretrained_cfg"),
        (
            {"architecture": "vit_base_patch16_224", "pretrained_cfg": {"std": [0.5, 0, 0.5]}},
            "pretrained_cfg.std[1]",
        ),
    ],
)
def test_a_hostile_model_config_is_one_line_naming_the_field(tmp_path: Path, config: Any, field: str) -> None:
    from segexport.importers import import_weights

    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SegexportError, match=re.escape(f"config.json: field '{field}'")):
        import_weights(tmp_path)


def test_deep_json_and_bad_preprocessing_are_one_line(tmp_path: Path) -> None:
    from segexport.importers import import_weights
    from segexport.importers.configs import read_preprocessor_config

    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SegexportError, match="nested deeper than"):
        import_weights(tmp_path)
    file = tmp_path / "preprocessor_config.json"
    file.write_text(json.dumps({"image_mean": ["red", 0, 0], "image_std": [1, 1, 1]}))
    with pytest.raises(SegexportError, match=re.escape("field 'image_mean[0]' must be a finite number")):
        read_preprocessor_config(file)
    file.write_text(json.dumps({"image_mean": [0, 0, 0], "image_std": [1, 0, 1]}))
    with pytest.raises(SegexportError, match=re.escape("field 'image_std[1]' must be > 0")):
        read_preprocessor_config(file)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper than"),
        (json.dumps({"graph_sha256": "a" * 64, "method": "minmax", "images": 2}), "field 'ranges'"),
        ('{"graph_sha256": "' + "a" * 64 + '", "method": "minmax", "images": 2, "ranges": {"x": [NaN, 1]}}',
         "field 'ranges.x' must be a finite number"),
    ],
)  # fmt: skip
def test_a_bad_calibration_cache_is_one_line(tmp_path: Path, content: str, message: str) -> None:
    from segexport.precision import Calibration

    cache = tmp_path / "calib.json"
    cache.write_text(content)
    with pytest.raises(SegexportError, match=re.escape(message)) as caught:
        Calibration.load(cache, "a" * 64)
    assert "\n" not in str(caught.value) and "recalibrate" in str(caught.value)
