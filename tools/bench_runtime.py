"""Runtime benchmarks for issue 11: Segmenter overhead, stream overlap, stream memory.

    python tools/bench_runtime.py --artifacts artifacts/segformer-b0 --frames 50 --size 512x512 --threads 2

1. overhead: `Segmenter` per frame (validation, resize, normalisation, inference, logits
   resize, argmax) vs the bare ONNX Runtime session call on the same preprocessed tensor,
   interleaved frame by frame so that both see the same machine load.
2. stream: `seg.stream` vs a plain sequential loop over frames that need decoding (PNG
   bytes at --stream-size), each `--rounds` times, alternating.
3. memory: resident memory over a long `seg.stream` (--memory-frames).
Prints tables; says nothing about a quiet machine it was not run on.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from segexport.data import SyntheticScenes
from segexport.runtime import Segmenter, preprocess
from segexport.runtime.preprocessing import resize
from segexport.shapes import parse_size


def _stats(times: list[float]) -> str:
    ms = np.asarray(times) * 1000
    return f"{ms.min():8.2f} {np.median(ms):8.2f} {np.percentile(ms, 90):8.2f}"


def bench_overhead(seg: Segmenter, frames: int, size: tuple[int, int]) -> None:
    runner = seg._runner
    session = getattr(runner, "session", None)
    if session is None:
        raise SystemExit(
            "the overhead benchmark compares against an ONNX Runtime session; use an ONNX backend"
        )
    pre = seg.manifest["preprocessing"]
    images = [image for image, _ in SyntheticScenes("eval", frames, size)]
    tensors = [
        preprocess(resize(image, seg.rule.export), pre["mean"], pre["std"], pre["scale"]) for image in images
    ]
    name = seg.manifest["inputs"][0]["name"]
    bare: list[float] = []
    full: list[float] = []
    seg(images[0], color="rgb")  # warm-up
    session.run(None, {name: tensors[0]})
    for image, tensor in zip(images, tensors, strict=True):
        start = time.perf_counter()
        session.run(None, {name: tensor})
        bare.append(time.perf_counter() - start)
        start = time.perf_counter()
        seg(image, color="rgb")
        full.append(time.perf_counter() - start)
    overhead = np.median(full) / np.median(bare) - 1
    print(f"\n## Segmenter overhead ({frames} frames {size[1]}x{size[0]}, export {seg.rule.export})")
    print("| path | min ms | median ms | p90 ms |\n|---|---|---|---|")
    print(f"| bare session.run (preprocessed tensor) | {' | '.join(_stats(bare).split())} |")
    print(f"| Segmenter(image) -> mask | {' | '.join(_stats(full).split())} |")
    print(f"median overhead: {overhead * 100:+.1f}%")


def _png_frames(count: int, size: tuple[int, int]) -> list[bytes]:
    from PIL import Image

    encoded = []
    for image, _ in SyntheticScenes("eval", min(count, 16), size):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return [encoded[i % len(encoded)] for i in range(count)]


def _decode(frames: list[bytes]) -> Iterator[np.ndarray]:
    from PIL import Image

    for data in frames:
        with Image.open(io.BytesIO(data)) as image:
            yield np.asarray(image.convert("RGB"))


def bench_stream(seg: Segmenter, frames: int, size: tuple[int, int], rounds: int) -> None:
    encoded = _png_frames(frames, size)

    def sequential() -> None:
        for frame in _decode(encoded):
            seg(frame, color="rgb")

    def streamed() -> None:
        for _ in seg.stream(_decode(encoded), color="rgb"):
            pass

    runs: dict[str, list[float]] = {"sequential": [], "stream": []}
    loops: dict[str, Callable[[], None]] = {"sequential": sequential, "stream": streamed}
    for _ in range(rounds):
        for label, loop in loops.items():
            start = time.perf_counter()
            loop()
            runs[label].append(frames / (time.perf_counter() - start))
    print(
        f"\n## stream vs sequential ({frames} PNG frames {size[1]}x{size[0]}, {rounds} rounds, alternating)"
    )
    print("| loop | median fps | all rounds |\n|---|---|---|")
    for label, fps in runs.items():
        print(f"| {label} | {np.median(fps):.2f} | {', '.join(f'{v:.2f}' for v in fps)} |")
    print(f"speed-up: {np.median(runs['stream']) / np.median(runs['sequential']):.2f}x")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_memory(seg: Segmenter, frames: int, size: tuple[int, int]) -> None:
    frame = SyntheticScenes("eval", 1, size)[0][0]

    def source() -> Iterator[np.ndarray]:
        for _ in range(frames):
            yield frame.copy()

    marks = {frames // 10, frames // 2, frames - 1}
    readings = []
    start = time.perf_counter()
    for item in seg.stream(source(), color="rgb"):
        if item.number in marks:
            readings.append((item.number + 1, _rss_mib()))
    seconds = time.perf_counter() - start
    print(f"\n## stream memory ({frames} frames {size[1]}x{size[0]}, {seconds:.0f} s)")
    print("| frames done | RSS MiB |\n|---|---|")
    for done, rss in readings:
        print(f"| {done} | {rss:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/segformer-b0"))
    parser.add_argument("--frames", type=int, default=50, help="frames for the overhead table")
    parser.add_argument("--size", default="512x512", help="HxW of the overhead frames")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stream-frames", type=int, default=30)
    parser.add_argument("--stream-size", default="720x1280", help="HxW of the decoded stream frames")
    parser.add_argument(
        "--stream-threads", type=int, default=1, help="ONNX Runtime threads in the stream test"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-frames", type=int, default=0, help="0 skips the memory run")
    parser.add_argument("--memory-artifacts", type=Path, help="artifact for the memory run [--artifacts]")
    parser.add_argument("--skip", nargs="*", default=[], choices=["overhead", "stream"])
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    if "overhead" not in args.skip:
        seg = Segmenter.load(args.artifacts, backend="onnxruntime-cpu", threads=args.threads)
        print(seg.describe())
        bench_overhead(seg, args.frames, parse_size(args.size))
    if "stream" not in args.skip:
        seg = Segmenter.load(args.artifacts, backend="onnxruntime-cpu", threads=args.stream_threads)
        bench_stream(seg, args.stream_frames, parse_size(args.stream_size), args.rounds)
    if args.memory_frames:
        seg = Segmenter.load(args.memory_artifacts or args.artifacts, threads=args.threads)
        bench_memory(seg, args.memory_frames, parse_size(args.size))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
