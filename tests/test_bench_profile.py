"""`segexport bench --profile`: the share of kernel time per op type from ONNX Runtime's profiler,
the warm-up run left out, on a small graph and on a benchmarked artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from segexport.bench import BenchRequest, run_bench
from segexport.bench.profile import op_shares, profile_session
from segexport.bench.report import format_report
from segexport.runtime import OnnxRuntimeRunner


def _matmul_relu() -> bytes:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.ones(64 * 64, np.float32).tolist())
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
            helper.make_node("Relu", ["y"], ["z"], name="r"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [256, 64])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model.SerializeToString()


def test_op_shares_sum_kernel_time_per_op_type() -> None:
    events = [
        {"cat": "Session", "name": "model_run", "dur": 1000, "ts": 0},
        {"cat": "Node", "name": "a_kernel_time", "dur": 600, "ts": 1, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "b_kernel_time", "dur": 200, "ts": 2, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "c_kernel_time", "dur": 200, "ts": 3, "args": {"op_name": "Relu"}},
        {"cat": "Node", "name": "c_fence_before", "dur": 50, "ts": 3, "args": {"op_name": "Relu"}},
    ]
    shares = op_shares(events, runs=2)
    assert list(shares["ops"]) == ["Conv", "Relu"]
    assert shares["ops"]["Conv"] == {"ms": 0.4, "share": 0.8}
    assert shares["kernel_ms"] == 0.5 and shares["run_ms"] == 0.5


def test_profile_session_counts_the_profiled_runs_only(tmp_path: Path) -> None:
    runner = OnnxRuntimeRunner(_matmul_relu(), threads=1, profile_prefix=str(tmp_path / "p"))
    shares = profile_session(runner, {"x": np.ones((256, 64), np.float32)}, runs=3)
    assert shares["runs"] == 3
    assert set(shares["ops"]) == {"MatMul", "Relu"}
    assert abs(sum(op["share"] for op in shares["ops"].values()) - 1) < 1e-3
    assert 0 < shares["kernel_ms"] <= shares["run_ms"]
    assert not list(tmp_path.iterdir())  # the profiler's file is read, then removed


def test_bench_profile_gives_each_onnx_row_its_op_shares(tmp_path: Path) -> None:
    request = BenchRequest(
        model="unet-small",
        artifacts=tmp_path / "unet-small",
        formats=("pytorch", "onnx-fp32"),
        backends=("ort-cpu",),
        size=(64, 64),
        runs=2,
        warmup=1,
        eval_images=1,
        profile=True,
    )
    result = run_bench(request)
    pytorch, fp32 = result.rows
    assert pytorch.profile is None
    assert fp32.profile is not None and "Conv" in fp32.profile["ops"]
    assert fp32.to_dict()["profile"]["ops"]["Conv"]["share"] > 0
    assert "per-op profile" in format_report(result) and "Conv " in format_report(result)
