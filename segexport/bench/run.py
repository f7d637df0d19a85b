"""`segexport bench` from start to end: check the options, prepare or read the artifact, open
the rows, evaluate, time, and describe the run in the header beside the rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from segexport.bench.accuracy import evaluate, labelled_folder
from segexport.bench.machine import (
    busy_warning,
    cpu_seconds,
    machine_info,
    other_processes_cores,
    usable_cores,
)
from segexport.bench.options import (
    DEFAULT_SECONDS,
    SCENARIOS,
    BenchRequest,
    Progress,
    batches_for,
    check_request,
    parse_backends,
    parse_formats,
)
from segexport.bench.prepare import prepared_artifact
from segexport.bench.profile import profile_rows
from segexport.bench.rows import Row, close_runner, open_rows, plan_rows
from segexport.bench.timing import GPU_SPLIT_NOT_MEASURED, ratios_to_pytorch, time_rows, timing_input
from segexport.errors import SegexportError
from segexport.reference import data_size, spec_for
from segexport.runtime.artifacts import read_manifest
from segexport.runtime.inputs import check_input_shapes
from segexport.runtime.preprocessing import input_shape
from segexport.runtime.runners import spin_waiting


@dataclass
class BenchResult:
    header: dict[str, Any]
    rows: list[Row]

    def to_dict(self) -> dict[str, Any]:
        return {**self.header, "rows": [row.to_dict() for row in self.rows]}


SPINNING_NOTES = {
    True: "ONNX Runtime's threads spin-wait for work (its default; at most one ONNX Runtime row is timed)",
    False: "ONNX Runtime's spin-waiting off in every row: {sessions} sessions are interleaved in one "
    "process, and an idle session's spinning threads would take the cores the timed one needs "
    "(unet-small FP32, 512x512, 2 cores: 176 ms interleaved with spinning, 143 ms without, 135 ms alone)",
}


def run_bench(request: BenchRequest, progress: Progress | None = None) -> BenchResult:
    """Prepare (or read) the artifact, open every row, evaluate, time; the rows in request order."""
    say = progress or (lambda _message: None)
    check_request(request)
    started = time.perf_counter()
    deadline = None if request.max_seconds is None else started + request.max_seconds
    threads = request.threads or usable_cores()
    with prepared_artifact(request, threads, say) as (directory, prepared):
        manifest = read_manifest(directory)
        spec = spec_for(manifest)
        if spec.input_kind != "image":
            raise SegexportError(f"{spec.name}: bench handles image models")
        size = request.size or data_size(manifest)
        batches = batches_for(request)
        for batch in batches:
            check_input_shapes(
                manifest, {"image": input_shape(manifest["preprocessing"], batch, size)}, "--size/--batch"
            )
        trained = prepared.get("trained", bool(manifest["model"].get("weights")))
        folder = labelled_folder(request.data, manifest, request.eval_images)
        runs, seconds = request.runs, (None if request.runs else request.seconds or DEFAULT_SECONDS)
        plan = plan_rows(parse_formats(request.formats), parse_backends(request.backends))
        say(
            f"bench {spec.name}: {request.scenario} at {size[0]}x{size[1]}, "
            f"batch {','.join(map(str, batches))}, "
            f"{threads} threads, {request.warmup} warm-up, "
            + (f"{runs} runs" if runs else f"{seconds:g} s")
            + " per format, interleaved"
        )
        warmup_feeds = {"image": timing_input(manifest, size, 1)}
        sessions = sum(1 for item in plan if getattr(item, "backend", "").startswith("ort-"))
        spinning = sessions <= 1
        with spin_waiting(spinning):
            rows, runners, memory_note = open_rows(
                plan, directory, manifest, threads, request.warmup, warmup_feeds, say, deadline
            )
        try:
            accuracy_note = evaluate(rows, runners, manifest, request, folder, threads, trained, say)
            cpu_before, clock = cpu_seconds(), time.perf_counter()
            time_rows(
                rows,
                runners,
                manifest,
                size,
                batches,
                request.scenario,
                request.warmup,
                runs,
                seconds,
                deadline,
            )
            others = other_processes_cores(cpu_before, time.perf_counter() - clock)
            if request.profile:
                say("profiling each ONNX Runtime row (after timing, in sessions of its own)")
                feeds = {"image": timing_input(manifest, size, batches[0])}
                with spin_waiting(spinning):
                    profile_rows(rows, runners, directory, manifest, threads, feeds)
        finally:
            for runner in runners.values():
                close_runner(runner)
    ratios_to_pytorch(rows, request.scenario)
    header = {
        "ok": True,
        "model": spec.name,
        "artifact": None if prepared.get("temporary") else str(directory),
        "weights": (manifest["model"].get("weights") or {}).get("path"),
        "scenario": request.scenario,
        "scenario_note": f"{SCENARIOS[request.scenario][1]}; after MLPerf Inference's edge scenarios, "
        "shortened for development machines (a time budget per format, not MLPerf's minimum duration "
        "and query counts)",
        "headline": SCENARIOS[request.scenario][0],
        "size": list(size),
        "batches": batches,
        "threads": threads,
        "warmup": request.warmup,
        "max_seconds": request.max_seconds,
        "runs": runs,
        "seconds_per_format": seconds,
        "data": request.data,
        "eval_images": request.eval_images,
        "accuracy_note": accuracy_note,
        "memory_note": memory_note,
        "timing_note": SPINNING_NOTES[spinning].format(sessions=sessions),
        "gpu_split_note": GPU_SPLIT_NOT_MEASURED,
        "prepared_seconds": prepared.get("seconds"),
        "onnx_nodes": {
            "raw": manifest["onnx"].get("nodes_before_simplify"),
            "simplified": manifest["onnx"].get("nodes"),
        },
        "machine": {**machine_info(threads), "other_processes_cores": others},
        "machine_warning": busy_warning(others, threads),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return BenchResult(header, rows)
