"""FP32 vs INT8-CPU timed four ways: interleaved or each alone, ONNX Runtime spin-waiting or not.

    python tools/bench_spinning.py --artifacts artifacts/unet-small --size 512x512 --runs 20

Why `segexport bench` opens its sessions without spin-waiting when it interleaves several
(docs/performance.md): an idle session's spinning threads take the cores the timed one needs.
Prints the median milliseconds of each graph and their ratio for each way.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from segexport.bench.timing import timing_input
from segexport.runtime.artifacts import read_manifest

FILES = ("model.onnx", "model.int8-cpu.onnx")


def session(path: Path, threads: int, spin: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timed(run: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
    started = time.perf_counter()
    run.run(None, feeds)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifacts", type=Path, required=True, help="An artifact with both files.")
    parser.add_argument("--size", default="512x512", help="HxW of the timing input.")
    parser.add_argument("--runs", type=int, default=20, help="Timed runs per graph and way.")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads.")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    feeds = {"image": timing_input(read_manifest(args.artifacts), (height, width), 1)}
    for interleaved in (True, False):
        for spin in (True, False):
            sessions = [session(args.artifacts / name, args.threads, spin) for name in FILES]
            for run in sessions:
                for _ in range(3):
                    run.run(None, feeds)
            times: list[list[float]] = [[] for _ in FILES]
            if interleaved:
                for _ in range(args.runs):
                    for index, run in enumerate(sessions):
                        times[index].append(timed(run, feeds))
            else:
                for index, run in enumerate(sessions):
                    times[index] = [timed(run, feeds) for _ in range(args.runs)]
            fp32, int8 = (1000 * float(np.median(t)) for t in times)
            way = (
                f"{'interleaved' if interleaved else 'each alone'}, {'spinning' if spin else 'not spinning'}"
            )
            print(f"{way}: FP32 {fp32:.1f} ms, INT8-CPU {int8:.1f} ms, {fp32 / int8:.2f}x", flush=True)


if __name__ == "__main__":
    main()
