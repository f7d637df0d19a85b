"""`segexport bench`: every format and backend of one artifact in one table, accuracy beside speed.

Fair by construction: every row gets the same inputs and thread count; each format is
warmed up right after it loads (excluded from the figures); the timed runs interleave
the formats (one run of each, then the next round) so drift on a busy machine hits all
of them alike; PyTorch eager, the baseline, runs in the same process and rounds, and
every ratio is to it. Accuracy goes through the comparator `verify` and `quantize` use
(`quantize.measure`, judged by `compare.default_tolerance`). A row that cannot run
stays in the table as `unavailable`, with the reason.

The scenarios follow MLPerf Inference's edge scenarios, shortened for development
machines (a time budget per format instead of MLPerf's 600 s minimum and query counts):
single-stream (batch 1, headline p90 latency), multi-stream (a fixed number of frames per
query, headline p99) and offline (throughput at the best of the batch sizes tried).

One module per concern: `options` (the request and its checks), `prepare` (export and quantize
when given a model), `rows` (planning and opening each format x backend), `accuracy`, `timing`,
`machine` (cores, CPU contention, memory probes, the machine description), `run` (all of it in
order) and `report` (the Markdown table and the plot).
"""

from __future__ import annotations

from segexport.bench.accuracy import labelled_folder
from segexport.bench.machine import (
    BUSY_CORES,
    busy_warning,
    cpu_seconds,
    machine_info,
    other_processes_cores,
    usable_cores,
)
from segexport.bench.options import (
    BACKEND_ALIASES,
    DEFAULT_FORMATS,
    DEFAULT_SECONDS,
    FORMAT_FILES,
    GPU_BACKENDS,
    MULTI_STREAM_FRAMES,
    OFFLINE_BATCHES,
    PYTORCH,
    SCENARIOS,
    BenchRequest,
    Progress,
    bench_reads,
    check_request,
    parse_backends,
    parse_batches,
    parse_formats,
)
from segexport.bench.rows import MEMORY_FALLBACK_NOTE, MEMORY_NOTE, Row, backend_used
from segexport.bench.run import BenchResult, run_bench
from segexport.bench.timing import (
    GPU_SPLIT_NOT_MEASURED,
    HIGH_VARIATION,
    MIN_TIMED_RUNS,
    PERCENTILES,
    interleaved_samples,
    latency_stats,
    timing_input,
)

__all__ = [
    "BACKEND_ALIASES",
    "BUSY_CORES",
    "DEFAULT_FORMATS",
    "DEFAULT_SECONDS",
    "FORMAT_FILES",
    "GPU_BACKENDS",
    "GPU_SPLIT_NOT_MEASURED",
    "HIGH_VARIATION",
    "MEMORY_FALLBACK_NOTE",
    "MEMORY_NOTE",
    "MIN_TIMED_RUNS",
    "MULTI_STREAM_FRAMES",
    "OFFLINE_BATCHES",
    "PERCENTILES",
    "PYTORCH",
    "SCENARIOS",
    "BenchRequest",
    "BenchResult",
    "Progress",
    "Row",
    "backend_used",
    "bench_reads",
    "busy_warning",
    "check_request",
    "cpu_seconds",
    "interleaved_samples",
    "labelled_folder",
    "latency_stats",
    "machine_info",
    "other_processes_cores",
    "parse_backends",
    "parse_batches",
    "parse_formats",
    "run_bench",
    "timing_input",
    "usable_cores",
]
