"""Benchmarks that print tables: numbers live here, never in timed tests.

Latencies are medians over interleaved runs (PyTorch, ONNX Runtime, PyTorch, ...) so
that drift on a noisy machine hits both sides alike; ratios come from the same run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segexport.export import ExportRequest, export_onnx
from segexport.reference import TorchRunner
from segexport.runtime import OnnxRuntimeRunner
from segexport.shapes import InputShape
from segexport.zoo import create_model, get_spec

Progress = Callable[[str], None]


@dataclass
class ExportBenchRow:
    model: str
    size: str
    export_s: float
    total_s: float
    nodes_before: int
    nodes_after: int
    torch_ms: float
    onnxruntime_ms: float

    @property
    def speedup(self) -> float:
        """PyTorch latency / ONNX Runtime latency (> 1: ONNX Runtime is faster)."""
        return self.torch_ms / self.onnxruntime_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": round(self.speedup, 3)}


def interleaved_medians(runners: Sequence[Callable[[], object]], runs: int, warmup: int) -> list[float]:
    """Median wall time (ms) of each callable, alternating between them every run."""
    for _ in range(warmup):
        for run in runners:
            run()
    samples: list[list[float]] = [[] for _ in runners]
    for _ in range(runs):
        for index, run in enumerate(runners):
            start = time.perf_counter()
            run()
            samples[index].append((time.perf_counter() - start) * 1000)
    return [statistics.median(s) for s in samples]


def bench_export(
    models: Sequence[str],
    size: tuple[int, int] = (512, 512),
    runs: int = 20,
    warmup: int = 3,
    threads: int = 2,
    progress: Progress | None = None,
) -> list[ExportBenchRow]:
    """Export each model (random weights) and time PyTorch vs ONNX Runtime at batch 1."""
    say = progress or (lambda _message: None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="segexport-bench-") as workdir:
        for name in models:
            spec = get_spec(name)
            say(f"{spec.name}: exporting at {size[0]}x{size[1]}")
            torch.manual_seed(0)
            model = create_model(spec.name)
            weights = Path(workdir) / f"{spec.name}.pt"
            torch.save(model.state_dict(), weights)
            manifest = export_onnx(
                ExportRequest(
                    spec.name, size=size, weights=weights, out_dir=Path(workdir) / spec.name, threads=threads
                )
            )
            feeds = {
                k: v.numpy()
                for k, v in spec.example_inputs(InputShape(1, *size), spec.default_num_classes).items()
            }
            reference = TorchRunner(model, spec.output_names, threads=threads)
            candidate = OnnxRuntimeRunner(Path(workdir) / spec.name / "model.onnx", threads=threads)
            say(f"{spec.name}: timing {runs} runs each (after {warmup} warm-up), {threads} threads")
            torch_ms, ort_ms = interleaved_medians(
                [partial(reference.infer, feeds), partial(candidate.infer, feeds)], runs, warmup
            )
            rows.append(
                ExportBenchRow(
                    spec.name,
                    f"{size[0]}x{size[1]}",
                    round(manifest["seconds"]["export"] + manifest["seconds"]["simplify"], 2),
                    manifest["seconds"]["total"],
                    manifest["onnx"]["nodes_before_simplify"],
                    manifest["onnx"]["nodes"],
                    round(torch_ms, 2),
                    round(ort_ms, 2),
                )
            )
    return rows


@dataclass
class PrecisionBenchRow:
    model: str
    precision: str
    onnxruntime_ms: float
    speedup_vs_fp32: float
    agreement: float | None  # None: random weights, timed only
    miou: float | None
    qdq_pairs: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BENCH_PRECISIONS = ("fp32", "fp16", "int8", "int8-cpu")


def _precision_file(name: str) -> str:
    return "model.onnx" if name == "fp32" else f"model.{name}.onnx"


def _quantize_demo(
    name: str, out: Path, size: tuple[int, int], threads: int, say: Progress
) -> dict[str, Any]:
    """The demo checkpoint through the real quantize stage: figures measured on the eval split."""
    from segexport.quantize import QuantizeRequest, quantize_artifact

    export_onnx(ExportRequest(name, weights="demo", size=size, out_dir=out, threads=threads))
    request = QuantizeRequest(artifacts=out, int8_cpu=True, threads=threads)
    return dict(quantize_artifact(request, progress=say)["precisions"])


def _convert_random(
    name: str, out: Path, size: tuple[int, int], threads: int, say: Progress
) -> dict[str, Any]:
    """Seeded random weights, for models without a demo checkpoint: the same graph transforms,
    timed only (agreement on random weights means nothing, so none is reported)."""
    import onnx

    from segexport import precision
    from segexport.quantize import RECOMMENDED_CALIBRATION_IMAGES, calibration_batches
    from segexport.runtime.artifacts import read_manifest, sha256_file

    torch.manual_seed(0)
    export_onnx(ExportRequest(name, size=size, out_dir=out, threads=threads))
    fp32_path = out / "model.onnx"
    fp32 = onnx.load(str(fp32_path))
    count = RECOMMENDED_CALIBRATION_IMAGES
    batches = calibration_batches("synthetic", count, size, read_manifest(out), say)
    calibration = precision.calibrate(fp32_path, batches, "minmax", sha256_file(fp32_path), out)
    onnx.save(precision.to_fp16(fp32), str(out / "model.fp16.onnx"))
    pairs = {}
    for scheme_name, scheme in precision.INT8_SCHEMES.items():
        int8 = precision.to_int8(fp32, calibration, scheme=scheme)
        onnx.save(int8, str(out / _precision_file(scheme_name)))
        pairs[scheme_name] = {"qdq_pairs": precision.qdq_pair_count(int8)}
    return {"fp32": {}, "fp16": {}, **pairs}


def bench_precision(
    models: Sequence[str],
    size: tuple[int, int] = (512, 512),
    runs: int = 20,
    warmup: int = 3,
    threads: int = 2,
    progress: Progress | None = None,
) -> list[PrecisionBenchRow]:
    """FP32/FP16/INT8 (TensorRT and CPU schemes) ONNX Runtime CPU latency, side by side.

    Models with a demo checkpoint go through `segexport quantize` and report accuracy;
    others are timed on seeded random weights.
    """
    from segexport.weights import has_demo_checkpoint

    say = progress or (lambda _message: None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="segexport-bench-") as workdir:
        for name in models:
            spec = get_spec(name)
            out = Path(workdir) / spec.name
            trained = has_demo_checkpoint(spec.name)
            say(
                f"{spec.name}: exporting {'the demo checkpoint' if trained else 'random weights'} "
                f"at {size[0]}x{size[1]} and converting"
            )
            convert = _quantize_demo if trained else _convert_random
            results = convert(spec.name, out, size, threads, say)
            runners = [OnnxRuntimeRunner(out / _precision_file(p), threads=threads) for p in BENCH_PRECISIONS]
            feeds = {"image": spec.example_inputs(InputShape(1, *size), 1)["image"].numpy()}
            say(f"{spec.name}: timing {runs} interleaved runs of each precision, {threads} threads")
            medians = interleaved_medians([partial(r.infer, feeds) for r in runners], runs, warmup)
            for precision_name, median in zip(BENCH_PRECISIONS, medians, strict=True):
                result = results[precision_name]
                agreement = result.get("agreement")
                rows.append(
                    PrecisionBenchRow(
                        spec.name,
                        precision_name,
                        round(median, 2),
                        round(medians[0] / median, 3),
                        None if agreement is None else round(agreement, 5),
                        result.get("miou"),
                        result.get("qdq_pairs"),
                    )
                )
    return rows


def format_precision_table(rows: Sequence[PrecisionBenchRow]) -> str:
    lines = [
        "| model | precision | ORT CPU ms | vs FP32 | agreement vs PyTorch FP32 | mIoU | Q/DQ pairs |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        miou = "-" if row.miou is None else f"{row.miou:.4f}"
        agreement = "- (random weights)" if row.agreement is None else f"{row.agreement:.4%}"
        pairs = "-" if row.qdq_pairs is None else str(row.qdq_pairs)
        lines.append(
            f"| {row.model} | {row.precision} | {row.onnxruntime_ms:.1f} | {row.speedup_vs_fp32:.2f}x | "
            f"{agreement} | {miou} | {pairs} |"
        )
    return "\n".join(lines)


def format_export_table(rows: Sequence[ExportBenchRow]) -> str:
    header = (
        "| model | size | export s | export+verify s | nodes raw -> simplified | PyTorch CPU ms | "
        "ORT CPU ms | PyTorch/ORT |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row.model} | {row.size} | {row.export_s:.1f} | {row.total_s:.1f} | "
            f"{row.nodes_before} -> {row.nodes_after} | "
            f"{row.torch_ms:.1f} | {row.onnxruntime_ms:.1f} | {row.speedup:.2f}x |"
        )
    return "\n".join(lines)


def machine_note(threads: int) -> str:
    import platform

    import onnxruntime

    return (
        f"{platform.processor() or platform.machine()}, {threads} threads, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}"
    )
