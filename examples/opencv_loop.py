"""A camera or video loop with OpenCV: frames in, overlays out. An example, not part of the package.

    python examples/opencv_loop.py --artifacts artifacts/segformer-b0 --source clip.mp4 --out overlay.mp4
    python examples/opencv_loop.py --artifacts artifacts/segformer-b0 --source 0 --show   # camera 0

Needs `opencv-python` (or JetPack's OpenCV on a Jetson: do not pip-install over it).
OpenCV frames are BGR, so the segmenter is told `color="bgr"`; a live camera uses
`drop_frames=True` so the mask is always of the newest frame, never a backlog.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import cv2
import numpy as np

from segexport.runtime import Segmenter


def frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--source", required=True, help="a video file or a camera index")
    parser.add_argument("--out", help="write the overlay video here (mp4v)")
    parser.add_argument("--show", action="store_true", help="show a window (needs a display)")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()

    live = args.source.isdigit()
    capture = cv2.VideoCapture(int(args.source) if live else args.source)
    if not capture.isOpened():
        raise SystemExit(f"cannot open {args.source}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    writer = None
    seg = Segmenter.load(args.artifacts, threads=args.threads)
    print(seg.describe())
    started, count = time.perf_counter(), 0
    with seg.stream(frames(capture), color="bgr", drop_frames=live) as stream:
        for _, frame, mask in stream:
            # Overlay in BGR: reverse the palette's RGB colours.
            picture = (frame * 0.5 + mask.colorize()[..., ::-1] * 0.5).astype(np.uint8)
            if args.out:
                if writer is None:
                    size = (picture.shape[1], picture.shape[0])
                    writer = cv2.VideoWriter(args.out, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
                writer.write(picture)
            if args.show:
                cv2.imshow("segexport", picture)
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    break
            count += 1
    capture.release()
    if writer is not None:
        writer.release()
    seconds = time.perf_counter() - started
    print(f"{count} frames in {seconds:.1f} s ({count / seconds:.1f} fps)")


if __name__ == "__main__":
    main()
