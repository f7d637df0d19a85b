#!/usr/bin/env python3
"""The GPU path's costs on whatever backends this machine has, as two tables.

1. The TensorRT runner's per-frame host overhead: wall time of `infer` minus the time spent
   waiting in `cudaStreamSynchronize` (where the backend's execute and the copies complete),
   i.e. staging into pinned memory, the enqueue calls and copying results out.
2. The mask head's saving: bytes copied device -> host per frame and latency, logits
   (FP32, 19 classes) against a mask of uint8 ids, at 512x512 and 1024x2048.

Backends, each when present: `emulated` (the test emulator: fake TensorRT and CUDA on the
CPU, ONNX Runtime computing; its latency is the CPU's), `cuda` (the real CUDA runtime with
the emulator's fake TensorRT: the runner's pinned buffers, streams, graphs and copies are
real; the fake engine is a device copy, or computes on the host), `onnxruntime-cpu`,
`onnxruntime-cuda` (IO binding; needs onnxruntime-gpu), `tensorrt` (real engines).

Medians over --runs frames after --warmup; every figure comes from this run.
Usage: python tools/bench_gpu_path.py [--runs N] [--sizes 512x512,1024x2048] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segexport.runtime import engine  # noqa: E402
from segexport.runtime.engine import TensorRTRunner  # noqa: E402
from segexport.runtime.engine_records import tensorrt_unavailable_reason  # noqa: E402

CLASSES = 19


# IR 8 is what opset 18 needs; onnx.helper's default follows the newest onnx, which older
# ONNX Runtime releases (e.g. 1.30, on the GPU machine) refuse.
IR_VERSION = 8


class SyncTimer:
    """A cudart module that forwards every call and adds up the time spent synchronising."""

    def __init__(self, cudart: Any) -> None:
        self._rt = cudart
        self.waited = 0.0

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._rt, name)
        if name == "cudaStreamSynchronize":

            def timed(*args: Any) -> Any:
                started = time.perf_counter()
                try:
                    return value(*args)
                finally:
                    self.waited += time.perf_counter() - started

            return timed
        return value


def segmentation_model(classes: int, channels: int = 3) -> bytes:
    """A 1x1 convolution to `classes` logits plus their ArgMax as uint8 ids (outputs logits, mask)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(size=(classes, channels, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "weight"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["ids"], axis=1, keepdims=0),
        helper.make_node("Cast", ["ids"], ["mask"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "H", "W"]),
            helper.make_tensor_value_info("mask", TensorProto.UINT8, ["N", "H", "W"]),
        ],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION)
    return model.SerializeToString()


def only_outputs(model: bytes, keep: str) -> bytes:
    import onnx

    proto = onnx.load_from_string(model)
    for output in [o for o in proto.graph.output if o.name != keep]:
        proto.graph.output.remove(output)
    return proto.SerializeToString()


def identity_model() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])],
        "copy",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION)
    return model.SerializeToString()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def timed_frames(run: Callable[[], Any], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return samples


class Environment:
    """Installs the fake modules the way the tests do (pytest's MonkeyPatch, undone on close)."""

    def __init__(self, kind: str) -> None:
        import pytest

        self.patch = pytest.MonkeyPatch()
        emulator = importlib.import_module("tests.emulator")
        if kind == "emulated":
            self.cudart = emulator.install(self.patch).cudart
        else:
            from cuda.bindings import runtime

            self.cudart = runtime
            if kind == "cuda":
                emulator.install(self.patch, cuda=runtime)
        self.engine_bytes = emulator.engine_bytes
        self.timer = SyncTimer(self.cudart)
        self.patch.setattr(engine, "import_cudart", lambda: self.timer)

    def close(self) -> None:
        self.patch.undo()


def profile(height: int, width: int, channels: int = 3) -> dict[str, dict[str, list[int]]]:
    shape = [1, channels, height, width]
    return {"image": {"min": shape, "opt": shape, "max": shape}}


Sizes = list[tuple[int, int]]


def runner_rows(kind: str, sizes: Sizes, runs: int, warmup: int, tmp: Path) -> list[dict[str, Any]]:
    rows = []
    models = {"identity": identity_model(), f"conv{CLASSES}": segmentation_model(CLASSES)}
    env = Environment(kind)
    try:
        for height, width in sizes:
            feeds = {"image": np.random.default_rng(0).normal(size=(1, 3, height, width)).astype(np.float32)}
            record = {"profile": profile(height, width)}
            for model_name, model in models.items():
                for graph in (False, True):
                    plan = _plan(kind, env, model, profile(height, width), tmp)
                    with TensorRTRunner(plan, record, cuda_graph=graph) as runner:
                        for _ in range(warmup):
                            runner.infer(feeds)
                        walls, overheads = [], []
                        for _ in range(runs):
                            waited = env.timer.waited
                            started = time.perf_counter()
                            outputs = runner.infer(feeds)
                            wall = time.perf_counter() - started
                            walls.append(wall)
                            overheads.append(wall - (env.timer.waited - waited))
                    rows.append(
                        {
                            "backend": kind,
                            "size": f"{height}x{width}",
                            "model": model_name,
                            "cuda_graph": graph,
                            "frame_ms": median_ms(walls),
                            "host_overhead_ms": median_ms(overheads),
                            "downloaded_bytes": sum(v.nbytes for v in outputs.values()),
                        }
                    )
    finally:
        env.close()
    return rows


def _plan(kind: str, env: Environment, model: bytes, shapes: dict[str, Any], tmp: Path) -> bytes:
    if kind != "tensorrt":
        return bytes(env.engine_bytes(model, shapes))
    from segexport.build import BuildOptions, build_engine

    source = tmp / "bench.onnx"
    source.write_bytes(model)
    return build_engine(source, shapes, BuildOptions(precision="fp16"), say=lambda _: None)


def mask_rows(kinds: list[str], sizes: Sizes, runs: int, warmup: int, tmp: Path) -> list[dict[str, Any]]:
    import onnxruntime as ort

    rows = []
    model = segmentation_model(CLASSES)
    for height, width in sizes:
        feeds = {"image": np.random.default_rng(1).normal(size=(1, 3, height, width)).astype(np.float32)}
        record = {"profile": profile(height, width)}
        for kind in kinds:
            for head in ("logits", "mask"):
                downloaded: int | None = None  # device -> host; None where everything stays on the host
                if kind == "onnxruntime-cpu":
                    graph = only_outputs(model, head)
                    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
                    samples = timed_frames(partial(session.run, None, feeds), runs, warmup)
                elif kind == "onnxruntime-cuda":
                    from segexport.runtime.ort_gpu import OrtCudaRunner

                    path = tmp / f"{head}.onnx"
                    path.write_bytes(only_outputs(model, head))
                    cuda_runner = OrtCudaRunner(path)
                    samples = timed_frames(partial(cuda_runner.infer, feeds), runs, warmup)
                    downloaded = sum(v.nbytes for v in cuda_runner.infer(feeds).values())
                else:  # the TensorRT runner, emulated or real
                    env = Environment(kind)
                    try:
                        plan = _plan(kind, env, model, profile(height, width), tmp)
                        with TensorRTRunner(plan, record, outputs=[head]) as runner:
                            samples = timed_frames(partial(runner.infer, feeds), runs, warmup)
                            downloaded = sum(v.nbytes for v in runner.infer(feeds).values())
                    finally:
                        env.close()
                rows.append(
                    {
                        "backend": kind,
                        "size": f"{height}x{width}",
                        "head": head,
                        "downloaded_bytes": downloaded,
                        "latency_ms": median_ms(samples),
                    }
                )
    return rows


def available_backends() -> tuple[list[str], list[str]]:
    """(TensorRT-runner backends, mask-head backends) this machine has."""
    import onnxruntime as ort

    runner_kinds, mask_kinds = ["emulated"], ["onnxruntime-cpu", "emulated"]
    try:
        from cuda.bindings import runtime

        status, count = runtime.cudaGetDeviceCount()
        if int(status) == 0 and count:
            runner_kinds.append("cuda")
            if tensorrt_unavailable_reason() is None:
                runner_kinds.append("tensorrt")
                mask_kinds.append("tensorrt")
    except ImportError:
        pass
    if "CUDAExecutionProvider" in ort.get_available_providers():
        mask_kinds.append("onnxruntime-cuda")
    return runner_kinds, mask_kinds


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}"
        return "-" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sizes", default="512x512,1024x2048")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    sizes = [(int(h), int(w)) for h, w in (size.split("x") for size in args.sizes.split(","))]
    runner_kinds, mask_kinds = available_backends()
    print(f"backends here: runner {', '.join(runner_kinds)}; mask head {', '.join(mask_kinds)}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        overhead: list[dict[str, Any]] = []
        for kind in runner_kinds:
            overhead += runner_rows(kind, sizes, args.runs, args.warmup, tmp)
        masks = mask_rows(mask_kinds, sizes, args.runs, args.warmup, tmp)
    for row in masks:
        logits = next(r for r in masks if r["backend"] == row["backend"] and r["size"] == row["size"])
        row["vs_logits"] = row["latency_ms"] / logits["latency_ms"]
    print("\nTensorRT runner, batch 1, per frame (medians):")
    print(
        table(
            overhead,
            ["backend", "size", "model", "cuda_graph", "frame_ms", "host_overhead_ms", "downloaded_bytes"],
        )
    )
    print(f"\nMask head ({CLASSES} classes, batch 1): bytes device->host and latency (medians):")
    print(table(masks, ["backend", "size", "head", "downloaded_bytes", "latency_ms", "vs_logits"]))
    if args.json:
        args.json.write_text(json.dumps({"runner": overhead, "mask_head": masks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
