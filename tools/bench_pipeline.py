"""Does `segexport run` keep up with its model? End-to-end frames/s beside the bare session's (issue 28).

    python tools/bench_pipeline.py --artifacts /tmp/seg512 --frames 60 --threads 2

Writes a 640x480 H.264 video of synthetic scenes (--frames long, kept in --video if given),
then, side by side in one process: the bare session (`runner.infer` on one pre-processed
tensor at the segmenter's input size, no decode/pre/post), `run_media` on the video (decode,
pre-process, inference, post-process, encode in the stream's threads), and the bare session
again, so both see the same machine load. Prints each figure, the ratio end-to-end / bare
(the target: >= 85 %) and the per-stage milliseconds per frame.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from segexport.data import SyntheticScenes
from segexport.runtime import Segmenter
from segexport.runtime.media import VideoWriter
from segexport.runtime.pipeline import plan_run, run_media


def write_video(path: Path, frames: int, size: tuple[int, int] = (480, 640)) -> None:
    writer = VideoWriter(path, 30.0, "mp4")
    try:
        for image, _ in SyntheticScenes("eval", frames, size):
            writer.write(image)
    finally:
        writer.close()


def bare_fps(segmenter: Segmenter, shape: tuple[int, int], frames: int) -> float:
    """Frames/s of the runner alone on one pre-processed frame at the segmenter's input size."""
    image = np.zeros((*shape, 3), dtype=np.uint8)
    tensor = segmenter._prepare(0, image, "rgb", None).tensors[0][None]
    segmenter._infer(tensor)  # warm-up
    started = time.perf_counter()
    for _ in range(frames):
        segmenter._infer(tensor)
    return frames / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resize", default="fixed")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--video", type=Path, help="Keep the test video here (default: a temporary file).")
    args = parser.parse_args()
    segmenter = Segmenter.load(
        args.artifacts, "onnxruntime-cpu", args.precision, threads=args.threads, resize=args.resize
    )
    with tempfile.TemporaryDirectory(prefix="segexport-pipeline-") as scratch:
        video = args.video or Path(scratch) / "input.mp4"
        if not video.exists():
            write_video(video, args.frames)
        before = bare_fps(segmenter, (480, 640), args.frames // 2)
        summary = run_media(segmenter, plan_run(str(video), Path(scratch) / "masks.mp4", force=True))
        after = bare_fps(segmenter, (480, 640), args.frames // 2)
    bare = (before + after) / 2
    print(f"segmenter: {segmenter.describe()}")
    print(f"bare session: {before:.2f} fps before, {after:.2f} fps after (mean {bare:.2f})")
    print(f"segexport run: {summary.frames} frames in {summary.seconds:.1f} s: {summary.fps:.2f} fps")
    print(f"end-to-end / bare: {summary.fps / bare:.0%} (target >= 85 %)")
    print(summary.stages_line())


if __name__ == "__main__":
    main()
