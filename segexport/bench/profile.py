"""`segexport bench --profile`: where each row's time goes, as a share of kernel time per op type.

ONNX Runtime rows reopen the same vouched bytes with the same providers and Q/DQ emulation in
a session with ONNX Runtime's profiler on (profiling needs it at session creation, and timing
a profiled session would perturb the timed figures), run the timing input a few times after
the timed rounds, and read the profiler's JSON: every `Node` event's `dur` summed per
`args.op_name` (the kernel that ran, so fused ops show up as `FusedMatMul`, `QLinearConv`, ...).
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from segexport.bench.rows import Row
from segexport.runtime import OnnxRuntimeRunner, Runner
from segexport.runtime.artifacts import vouched_bytes
from segexport.runtime.runners import emulates_qdq_here

PROFILE_RUNS = 5  # profiled runs per row, after a warm-up run that is not counted
NOT_PROFILED = (
    "not profiled: only ONNX Runtime rows have a per-op profile here (TensorRT's layer timings "
    "need trtexec --dumpProfile)"
)


def op_shares(events: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    """Per op type: milliseconds per run and share of kernel time, largest first, from the
    events of ONNX Runtime's profiler JSON (`runs` model runs counted in them)."""
    per_op: dict[str, float] = defaultdict(float)
    model_run = 0.0
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            per_op[event.get("args", {}).get("op_name", "?")] += float(event.get("dur", 0))
        elif event.get("cat") == "Session" and event.get("name") == "model_run":
            model_run += float(event.get("dur", 0))
    kernels = sum(per_op.values())
    ops = {
        op: {"ms": round(us / 1000 / runs, 3), "share": round(us / kernels, 4) if kernels else 0.0}
        for op, us in sorted(per_op.items(), key=lambda item: -item[1])
    }
    return {
        "runs": runs,
        "kernel_ms": round(kernels / 1000 / runs, 3),
        "run_ms": round(model_run / 1000 / runs, 3),
        "ops": ops,
    }


def profile_session(
    runner: OnnxRuntimeRunner, feeds: dict[str, np.ndarray], runs: int = PROFILE_RUNS
) -> dict[str, Any]:
    """One warm-up run then `runs` profiled runs of a runner opened with `profile_prefix`;
    the events of the warm-up run (up to the end of the first `model_run`) are not counted."""
    for _ in range(runs + 1):
        runner.session.run(None, feeds)
    path = Path(runner.session.end_profiling())
    try:
        events = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    starts = sorted(
        (float(e["ts"]), float(e["dur"]))
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    first_end = starts[0][0] + starts[0][1] if starts else 0.0
    return op_shares([e for e in events if float(e.get("ts", 0)) >= first_end], runs)


def profile_rows(
    rows: list[Row],
    runners: dict[int, Runner],
    directory: Path,
    manifest: dict[str, Any],
    threads: int,
    feeds: dict[str, np.ndarray],
    runs: int = PROFILE_RUNS,
) -> None:
    """A per-op profile into each row that ran on ONNX Runtime; the reason into the others."""
    with tempfile.TemporaryDirectory(prefix="segexport-profile-") as scratch:
        for index, runner in runners.items():
            row = rows[index]
            session = getattr(runner, "session", None)
            if row.file is None:  # the PyTorch baseline
                continue
            if session is None:
                row.profile = {"reason": NOT_PROFILED}
                continue
            options = session.get_provider_options()
            profiled = OnnxRuntimeRunner(
                vouched_bytes(directory, row.file, manifest),
                threads=threads,
                providers=[(name, options.get(name, {})) for name in session.get_providers()],
                name=row.file,
                emulate_qdq=emulates_qdq_here(manifest, row.file),
                profile_prefix=str(Path(scratch) / f"row{index}"),
            )
            row.profile = profile_session(profiled, feeds, runs)
