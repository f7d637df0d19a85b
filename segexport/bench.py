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
from segexport.runtime import OnnxRuntimeRunner
from segexport.shapes import InputShape
from segexport.verify import TorchRunner
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
    agreement: float
    miou: float | None
    qdq_pairs: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bench_precision(
    models: Sequence[str],
    size: tuple[int, int] = (512, 512),
    runs: int = 20,
    warmup: int = 3,
    threads: int = 2,
    progress: Progress | None = None,
) -> list[PrecisionBenchRow]:
    """Demo checkpoint -> FP32/FP16/INT8 ONNX; ONNX Runtime CPU latency of each, side by side."""
    from segexport.quantize import QuantizeRequest, quantize_artifact

    say = progress or (lambda _message: None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="segexport-bench-") as workdir:
        for name in models:
            spec = get_spec(name)
            out = Path(workdir) / spec.name
            say(f"{spec.name}: exporting the demo checkpoint at {size[0]}x{size[1]} and quantizing")
            export_onnx(ExportRequest(spec.name, weights="demo", size=size, out_dir=out, threads=threads))
            manifest = quantize_artifact(QuantizeRequest(artifacts=out, threads=threads), progress=say)
            precisions = ["fp32", "fp16", "int8"]
            runners = [
                OnnxRuntimeRunner(out / ("model.onnx" if p == "fp32" else f"model.{p}.onnx"), threads=threads)
                for p in precisions
            ]
            feeds = {"image": spec.example_inputs(InputShape(1, *size), 1)["image"].numpy()}
            say(f"{spec.name}: timing {runs} interleaved runs of each precision, {threads} threads")
            medians = interleaved_medians([partial(r.infer, feeds) for r in runners], runs, warmup)
            for precision_name, median in zip(precisions, medians, strict=True):
                result = manifest["precisions"][precision_name]
                rows.append(
                    PrecisionBenchRow(
                        spec.name,
                        precision_name,
                        round(median, 2),
                        round(medians[0] / median, 3),
                        round(result["agreement"], 5),
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
        pairs = "-" if row.qdq_pairs is None else str(row.qdq_pairs)
        lines.append(
            f"| {row.model} | {row.precision} | {row.onnxruntime_ms:.1f} | {row.speedup_vs_fp32:.2f}x | "
            f"{row.agreement:.4%} | {miou} | {pairs} |"
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
