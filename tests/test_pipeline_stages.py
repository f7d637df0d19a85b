"""A pipeline that keeps up (issue 28): post-processing on the smallest tensor that gives the same
mask, per-stage times from `segexport run` and `Segmenter.stream`, and TensorRT streams through
the runner's two-frames-in-flight `infer_stream` (on the emulator)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segexport.build import BuildOptions, BuildRequest, build_artifact
from segexport.data import SyntheticScenes
from segexport.runtime import Segmenter
from segexport.runtime.geometry import logits_to_mask, resize_logits
from segexport.runtime.stream import STAGES
from tests.clitools import run
from tests.emulator import install


@pytest.mark.parametrize(
    ("shape", "size"),
    [((7, 64, 64), (480, 640)), ((5, 96, 160), (37, 91)), ((3, 40, 40), (40, 40)), ((300, 8, 8), (17, 13))],
)
def test_logits_to_mask_is_the_argmax_of_the_resized_logits(
    shape: tuple[int, int, int], size: tuple[int, int]
) -> None:
    rng = np.random.default_rng(0)
    coarse = rng.normal(size=(shape[0], 4, 4)).astype(np.float32)
    logits = resize_logits(coarse, shape[1:]) + rng.normal(scale=0.05, size=shape).astype(np.float32)
    logits[:, :3, :3] = 1.0  # exact ties: the first class wins either way
    expected = np.argmax(resize_logits(logits, size), axis=0)
    mask = logits_to_mask(logits, size)
    assert mask.shape == size and mask.dtype == (np.uint8 if shape[0] <= 256 else np.int32)
    assert np.array_equal(mask, expected)


def test_logits_to_mask_matches_on_a_trained_model(small_artifact: Path) -> None:
    segmenter = Segmenter.load(small_artifact, "onnxruntime-cpu", "fp32", threads=1)
    for image, _ in SyntheticScenes("eval", 3, (50, 70)):
        item = segmenter._prepare(0, image, "rgb", None)
        segmenter._run([item])
        logits = item.outputs[0]
        assert np.array_equal(
            logits_to_mask(logits, (50, 70)), np.argmax(resize_logits(logits, (50, 70)), axis=0)
        )


def test_stream_and_run_report_each_stage(small_artifact: Path, tmp_path: Path) -> None:
    segmenter = Segmenter.load(small_artifact, "onnxruntime-cpu", "fp32", threads=1)
    frames = [image for image, _ in SyntheticScenes("eval", 4, (48, 80))]
    with segmenter.stream(frames, color="rgb") as stream:
        masks = [item.mask for item in stream]
        times = stream.times.per_frame_ms()
    assert [np.asarray(m).tolist() for m in masks] == [
        np.asarray(segmenter(f, "rgb")).tolist() for f in frames
    ]
    assert list(times) == list(STAGES) and times["encode"] == 0  # nobody encoded
    assert all(times[stage] > 0 for stage in ("pre", "infer", "post"))
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index}.png")
    common = ["run", "--artifacts", str(small_artifact), "--input", str(folder), "--output"]
    code, stdout, _ = run(*common, str(tmp_path / "out"), "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert list(summary["stages_ms"]) == list(STAGES) and summary["stages_ms"]["encode"] > 0
    assert summary["inference_fps"] > 0 and summary["frames"] == 4
    code, stdout, _ = run(*common, str(tmp_path / "out2"))
    assert code == 0 and "per frame (ms): decode" in stdout and "inference alone" in stdout
    one = ["run", "--artifacts", str(small_artifact), "--input", str(folder / "0.png")]
    code, stdout, _ = run(*one, "--output", str(tmp_path / "one.png"))
    assert code == 0 and "per frame" not in stdout  # one image: no stream, no stage clock to show


def test_tensorrt_streams_keep_two_frames_in_flight(
    small_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = tmp_path / "artifact"
    shutil.copytree(small_artifact, artifact)
    install(monkeypatch)
    build_artifact(
        BuildRequest(BuildOptions(precision="fp32", max_size=(64, 64), max_batch=1), artifacts=artifact)
    )
    reference = Segmenter.load(artifact, "onnxruntime-cpu", "fp32", threads=1)
    frames = [image for image, _ in SyntheticScenes("eval", 5, (40, 56))]
    with Segmenter.load(artifact, "tensorrt", "fp32") as segmenter:
        runner = segmenter._runner
        calls: list[int] = []
        original = runner.infer_stream  # type: ignore[union-attr]

        def counted(feeds):  # type: ignore[no-untyped-def]
            calls.append(1)
            return original(feeds)

        monkeypatch.setattr(runner, "infer_stream", counted)
        monkeypatch.setattr(runner, "infer", lambda _: pytest.fail("streamed frames went through infer"))
        with segmenter.stream(frames, color="rgb") as stream:
            masks = [np.asarray(item.mask) for item in stream]
            assert stream.times.per_frame_ms()["infer"] > 0
    assert calls == [1]
    for frame, mask in zip(frames, masks, strict=True):
        assert (mask == np.asarray(reference(frame, "rgb"))).mean() > 0.999
