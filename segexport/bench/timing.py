"""`segexport bench`'s timing: every open row run round by round on the same seeded input, so
drift on a busy machine hits all of them alike; latency statistics and ratios to PyTorch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from segexport.bench.options import GPU_BACKENDS, PYTORCH, SCENARIOS
from segexport.bench.rows import Row
from segexport.data import SyntheticScenes
from segexport.errors import SegexportError, first_line
from segexport.runtime import Runner, preprocess_for

MIN_TIMED_RUNS = 5  # a time budget never ends a format before this many runs
HIGH_VARIATION = 0.10  # coefficient of variation above which a row warns (trtexec warns at 1% on GPUs)
PERCENTILES = (50, 90, 95, 99)
GPU_SPLIT_NOT_MEASURED = (
    "not measured: the runners do not time host-to-device copies, compute and device-to-host "
    "copies separately (trtexec --dumpProfile does)"
)


def past(deadline: float | None) -> bool:
    """Whether `--max-seconds` (a `time.perf_counter()` deadline; None: no budget) is spent."""
    return deadline is not None and time.perf_counter() >= deadline


def timing_input(manifest: dict[str, Any], size: tuple[int, int], batch: int) -> np.ndarray:
    """The same preprocessed synthetic frames for every row (seeded: identical across runs)."""
    prep = manifest["preprocessing"]
    images = np.stack([image for image, _ in SyntheticScenes("eval", batch, size)])
    return preprocess_for(prep, images)


def time_rows(
    rows: list[Row],
    runners: dict[int, Runner],
    manifest: dict[str, Any],
    size: tuple[int, int],
    batches: list[int],
    scenario: str,
    warmup: int,
    runs: int | None,
    seconds: float | None,
    deadline: float | None = None,
) -> None:
    """Interleaved timed runs of every open row at each batch size; figures into the rows.
    Past `deadline` (--max-seconds) warm-ups stop and each batch size gets one round."""
    for batch in batches:
        feeds = {"image": timing_input(manifest, size, batch)}
        live = dict(runners)
        for index, runner in list(live.items()):
            try:
                for done in range(max(warmup if batch != 1 else 0, 1)):  # batch 1 warmed up at load
                    if done and past(deadline):
                        break
                    runner.infer(feeds)
            except Exception as error:  # e.g. an engine built for smaller batches
                failed = f"batch {batch} failed: {first_line(error)}"
                rows[index].reason = "; ".join(filter(None, (rows[index].reason, failed)))
                del live[index]
        samples = interleaved_samples(
            list(live.values()), feeds, runs, seconds, f"timing batch {batch}", deadline
        )
        for index, (latencies, enqueues) in zip(live, samples, strict=True):
            stats = latency_stats(latencies)
            row = rows[index]
            figures = {
                **stats,
                "throughput_fps": round(batch * 1000 / stats["mean"], 2),
                "runs": len(latencies),
            }
            if enqueues:
                figures["enqueue_ms"] = round(float(np.median(enqueues)), 3)
            row.batches[batch] = figures
    for index, row in enumerate(rows):
        if not row.batches:
            if index in runners:  # it loaded, but no batch size ran
                row.status = "unavailable"
            continue
        best = (
            max(row.batches, key=lambda b: row.batches[b]["throughput_fps"])
            if scenario == "offline"
            else batches[0]
        )
        figures = dict(row.batches[best])
        row.batch, row.runs = best, int(figures.pop("runs"))
        row.throughput_fps = figures.pop("throughput_fps")
        row.enqueue_ms = figures.pop("enqueue_ms", None)
        row.latency_ms = figures
        if scenario != "offline":
            row.batches = {}
        if figures["std"] > HIGH_VARIATION * figures["mean"]:
            row.warning = (
                f"latency varies a lot between runs (coefficient of variation "
                f"{figures['std'] / figures['mean']:.0%} > {HIGH_VARIATION:.0%}): the machine is busy or "
                "throttling; rerun with more --seconds"
            )
        if row.backend in GPU_BACKENDS:
            row.gpu_split = {"measured": False, "reason": GPU_SPLIT_NOT_MEASURED}


def interleaved_samples(
    runners: Sequence[Runner],
    feeds: dict[str, np.ndarray],
    runs: int | None,
    seconds: float | None,
    label: str,
    deadline: float | None = None,
) -> list[tuple[list[float], list[float]]]:
    """Latencies (ms) of each runner, one run of each per round, and enqueue times for runners
    that split submission from collection (TensorRT's `submit`/`result`)."""
    samples: list[tuple[list[float], list[float]]] = [([], []) for _ in runners]
    if not runners:
        return samples
    budget = None if seconds is None else seconds * len(runners)
    bar = _bar(runs if runs else budget, label, "run" if runs else "s")
    started = time.perf_counter()
    rounds = 0
    while True:
        for runner, (latencies, enqueues) in zip(runners, samples, strict=True):
            latency, enqueue = _timed(runner, feeds)
            latencies.append(latency)
            if enqueue is not None:
                enqueues.append(enqueue)
        rounds += 1
        elapsed = time.perf_counter() - started
        bar.update(1 if runs else min(elapsed, budget or 0) - bar.n)
        if (
            (runs is not None and rounds >= runs)
            or (budget is not None and elapsed >= budget and rounds >= MIN_TIMED_RUNS)
            or past(deadline)
        ):
            break
    bar.close()
    return samples


def _timed(runner: Runner, feeds: dict[str, np.ndarray]) -> tuple[float, float | None]:
    submit = getattr(runner, "submit", None)
    start = time.perf_counter()
    if submit is None:
        runner.infer(feeds)
        return (time.perf_counter() - start) * 1000, None
    frame = submit(feeds, slot_index=0)
    enqueued = time.perf_counter()
    runner.result(frame)  # type: ignore[attr-defined]
    end = time.perf_counter()
    return (end - start) * 1000, (enqueued - start) * 1000


def _bar(total: float | None, label: str, unit: str) -> Any:
    """A progress bar on a terminal (stderr), nothing in logs."""
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit=unit, file=sys.stderr, leave=False, disable=None)


def latency_stats(samples: Sequence[float]) -> dict[str, float]:
    """min / mean / median / p90 / p95 / p99 / max / std of latencies in ms."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        raise SegexportError("no timed runs")
    p50, p90, p95, p99 = np.percentile(values, PERCENTILES)
    figures = {
        "min": values.min(),
        "mean": values.mean(),
        "median": p50,
        "p90": p90,
        "p95": p95,
        "p99": p99,
        "max": values.max(),
        "std": values.std(),
    }
    return {key: round(float(value), 3) for key, value in figures.items()}


def ratios_to_pytorch(rows: list[Row], scenario: str) -> None:
    """Each row's speed relative to PyTorch eager in the same run (> 1: faster)."""
    base = next((r for r in rows if r.format == PYTORCH and r.latency_ms), None)
    if base is None:
        return
    for row in rows:
        if row.latency_ms is None:
            continue
        if scenario == "offline":
            assert row.throughput_fps is not None and base.throughput_fps is not None
            row.vs_pytorch = round(row.throughput_fps / base.throughput_fps, 2)
        else:
            key = SCENARIOS[scenario][0]
            assert base.latency_ms is not None
            row.vs_pytorch = round(base.latency_ms[key] / row.latency_ms[key], 2)
