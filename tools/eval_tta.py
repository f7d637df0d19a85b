"""mIoU and time per image of TTA and CRF refinement on the demo evaluation split (issue 11).

    python tools/eval_tta.py artifacts/segformer-b0 artifacts/unet-small --images 32 --size 128x128

Each artifact runs through `Segmenter` five ways: none, flip, multi-scale + flip, CRF, and
multi-scale + flip + CRF, on the same held-out synthetic split `segexport eval` uses.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from segexport.data import SyntheticScenes
from segexport.runtime.metrics import confusion_matrix, iou_report
from segexport.runtime.segmenter import TTA, Segmenter
from segexport.shapes import parse_size

VARIANTS: dict[str, dict[str, object]] = {
    "none": {},
    "flip": {"tta": TTA(scales=(1.0,), flip=True)},
    "multi-scale + flip": {"tta": TTA(scales=(0.75, 1.0, 1.25), flip=True)},
    "CRF": {"refine": "crf"},
    "multi-scale + flip + CRF": {"tta": TTA(scales=(0.75, 1.0, 1.25), flip=True), "refine": "crf"},
}


def evaluate(
    artifact: Path, images: int, size: tuple[int, int], threads: int
) -> list[tuple[str, float, float]]:
    scenes = SyntheticScenes("eval", images, size)
    rows = []
    for label, options in VARIANTS.items():
        seg = Segmenter.load(artifact, threads=threads, color="rgb", **options)  # type: ignore[arg-type]
        seg(scenes[0][0])  # warm-up
        confusion = np.zeros((seg.num_classes, seg.num_classes), dtype=np.int64)
        seconds = 0.0
        for image, labels in scenes:
            start = time.perf_counter()
            mask = seg(image)
            seconds += time.perf_counter() - start
            confusion += confusion_matrix(labels, np.asarray(mask), seg.num_classes)
        rows.append((label, iou_report(confusion, seg.class_names).miou, seconds / images * 1000))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", type=Path, nargs="+")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", default="128x128")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    size = parse_size(args.size)
    print(f"| model | variant | mIoU | delta | ms / image |  ({args.images} eval images {size[1]}x{size[0]})")
    print("|---|---|---|---|---|")
    for artifact in args.artifacts:
        rows = evaluate(artifact, args.images, size, args.threads)
        base = rows[0][1]
        for label, miou, ms in rows:
            print(f"| {artifact.name} | {label} | {miou:.4f} | {miou - base:+.4f} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
