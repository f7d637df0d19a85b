"""`segexport bench` on unet-small at 64x64 with a few runs: the table's fields, sane numbers,
a row with a status for every requested format, unavailable backends as rows with their
reason, an engine row on the TensorRT/CUDA emulator, and every bad input as one line."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

from segexport.bench import (
    BACKEND_ALIASES,
    DEFAULT_FORMATS,
    BenchRequest,
    BenchResult,
    busy_warning,
    cpu_seconds,
    interleaved_samples,
    latency_stats,
    other_processes_cores,
    parse_formats,
    run_bench,
)
from segexport.bench.report import format_report, write_plot
from segexport.build import BuildOptions, BuildRequest, build_artifact
from segexport.cli import main
from segexport.report import json_safe
from segexport.runtime import OnnxRuntimeRunner
from segexport.runtime.files import engine_file_name
from tests.clitools import assert_one_line_error, run
from tests.emulator import install

STATUSES = {"ok", "verify-failed", "unavailable"}
LATENCY_KEYS = ("min", "mean", "median", "p90", "p95", "p99", "max", "std")
QUICK: dict[str, Any] = {"size": (64, 64), "runs": 3, "warmup": 1, "eval_images": 2}


def quick(**options: Any) -> BenchRequest:
    """A request at 64x64 with 3 timed runs and 2 evaluation images."""
    return BenchRequest(**{**QUICK, **options})


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[BenchResult, Path]:
    """Every default format and backend of the demo unet-small, exported and quantized by bench."""
    out = tmp_path_factory.mktemp("bench") / "unet-small"
    result = run_bench(quick(model="unet-small", weights="demo", artifacts=out))
    return result, out


def assert_sane(row: dict) -> None:
    latency = row["latency_ms"]
    assert all(latency[key] > 0 for key in LATENCY_KEYS[:-1]), latency
    ordered = [latency[key] for key in ("min", "median", "p90", "p95", "p99", "max")]
    assert ordered == sorted(ordered), latency
    assert latency["min"] <= latency["mean"] <= latency["max"]
    assert row["throughput_fps"] > 0 and row["runs"] == QUICK["runs"]
    assert row["peak_mem_mb"] is not None and row["peak_mem_mb"] >= 0


def test_every_requested_format_has_a_row_with_a_status(demo: tuple[BenchResult, Path]) -> None:
    result, _ = demo
    data = json.loads(json.dumps(json_safe(result.to_dict())))
    for key in (
        "model",
        "scenario",
        "headline",
        "size",
        "threads",
        "machine",
        "memory_note",
        "accuracy_note",
        "timing_note",
    ):
        assert key in data, key
    assert data["machine"]["versions"]["onnxruntime"] == onnxruntime.__version__
    assert data["prepared_seconds"]["export"] > 0 and data["prepared_seconds"]["quantize"] > 0
    rows = data["rows"]
    assert {row["format"] for row in rows} == set(parse_formats(DEFAULT_FORMATS))
    for row in rows:
        assert row["status"] in STATUSES, row
        assert row["status"] == "ok" or row["reason"], row
        if row["status"] != "unavailable":
            assert_sane(row)
    ran = {(row["format"], row["backend"]) for row in rows if row["latency_ms"]}
    assert {("pytorch", "pytorch"), ("onnx-fp32", "ort-cpu"), ("onnx-int8-cpu", "ort-cpu")} <= ran


def test_accuracy_beside_speed_with_pytorch_as_the_baseline(demo: tuple[BenchResult, Path]) -> None:
    rows = {(row.format, row.backend): row for row in demo[0].rows}
    baseline, fp32 = rows["pytorch", "pytorch"], rows["onnx-fp32", "ort-cpu"]
    assert baseline.vs_pytorch == 1.0 and fp32.vs_pytorch is not None and fp32.vs_pytorch > 0
    assert baseline.accuracy is not None and baseline.accuracy["agreement"] == 1.0
    assert fp32.accuracy is not None and fp32.accuracy["agreement"] > 0.999
    assert fp32.accuracy["miou"] == pytest.approx(baseline.accuracy["miou"], abs=1e-3)
    assert fp32.accuracy["tolerance"]["min_agreement"] == 0.999  # verify's FP32 bound
    assert fp32.backend_used == "onnxruntime CPU" and fp32.size_mb and fp32.size_mb > 0


def test_an_unavailable_backend_is_a_row_with_its_reason(demo: tuple[BenchResult, Path]) -> None:
    rows = {(row.format, row.backend): row for row in demo[0].rows}
    engine = rows["engine-fp16", "tensorrt"]
    assert engine.status == "unavailable" and engine.latency_ms is None
    assert engine.reason is not None and "no model.fp16.engine" in engine.reason
    cuda = rows["onnx-fp16", "ort-cuda"]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider: the row may run")
    assert cuda.status == "unavailable" and cuda.reason is not None
    assert "this onnxruntime build has no CUDAExecutionProvider" in cuda.reason
    table = format_report(demo[0])
    assert "this onnxruntime build has no CUDAExecutionProvider" in table
    assert "| onnx-fp16 | ort-cuda | - | unavailable [" in table


def test_a_provider_that_falls_back_to_the_cpu_is_reported(
    demo: tuple[BenchResult, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime quietly runs on the CPU when CUDA cannot load: the row says so."""
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime really has the CUDA provider")
    offered = ["CUDAExecutionProvider", *onnxruntime.get_available_providers()]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: offered)
    request = quick(artifacts=demo[1], formats="onnx-fp32", backends="ort-cuda")
    (row,) = run_bench(request).rows
    assert row.status == "unavailable" and row.reason is not None
    assert "instead of CUDAExecutionProvider" in row.reason


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_artifacts_are_benchmarked_as_they_are_in_every_scenario(demo: tuple[BenchResult, Path]) -> None:
    before = _snapshot(demo[1])
    common = {"artifacts": demo[1], "formats": "onnx-fp32,onnx-int8", "backends": "ort-cpu"}
    multi = run_bench(quick(scenario="multi-stream", batches=[2], **common))
    assert multi.header["headline"] == "p99" and {row.batch for row in multi.rows} == {2}
    offline = run_bench(quick(scenario="offline", batches=[1, 2], **common))
    for row in offline.rows:
        assert set(row.batches) == {1, 2}
        best = max(row.batches, key=lambda b: row.batches[b]["throughput_fps"])
        assert row.batch == best and row.throughput_fps == row.batches[best]["throughput_fps"]
    assert _snapshot(demo[1]) == before


def test_engine_rows_on_the_emulator_split_enqueue_from_latency(
    demo: tuple[BenchResult, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = tmp_path / "unet-small"
    shutil.copytree(demo[1], artifact)
    install(monkeypatch)
    options = BuildOptions(precision="fp32", max_size=(128, 128), max_batch=1)
    build_artifact(BuildRequest(options, artifacts=artifact, force=True))
    request = quick(artifacts=artifact, formats="engine-fp32", backends="tensorrt")
    request.scenario, request.batches = "offline", [1, 2]  # the engine takes batch 1 only
    (row,) = run_bench(request).rows
    assert row.file == engine_file_name("fp32") and row.status == "ok", row.reason
    assert set(row.batches) == {1} and row.batch == 1
    assert "batch 2 failed" in str(row.reason) and "outside the range the engine was built for" in str(
        row.reason
    )
    assert row.backend_used == "tensorrt" and row.latency_ms is not None
    assert row.accuracy is not None and row.accuracy["agreement"] > 0.999  # the emulator runs the ONNX
    assert row.enqueue_ms is not None and 0 < row.enqueue_ms <= row.latency_ms["max"]
    assert row.gpu_split is not None and row.gpu_split["measured"] is False
    assert "| enqueue ms | H2D / compute / D2H |" in format_report(BenchResult({**demo[0].header}, [row]))


def test_interleaved_samples_time_each_runner_every_round(demo: tuple[BenchResult, Path]) -> None:
    runners = [OnnxRuntimeRunner(demo[1] / name, threads=1) for name in ("model.onnx", "model.int8.onnx")]
    feeds = {"image": np.zeros((1, 3, 64, 64), np.float32)}
    samples = interleaved_samples(runners, feeds, runs=4, seconds=None, label="test")
    assert [len(latencies) for latencies, _ in samples] == [4, 4]
    assert all(enqueues == [] for _, enqueues in samples)  # ONNX Runtime has no enqueue/collect split
    timed = interleaved_samples(runners[:1], feeds, runs=None, seconds=0.05, label="test")
    assert len(timed[0][0]) >= 5  # a time budget never stops before MIN_TIMED_RUNS


def test_other_processes_taking_the_cpu_are_warned_about() -> None:
    before = cpu_seconds()
    if before is None:
        pytest.skip("no /proc/stat: CPU use of other processes is not measured here")
    time.sleep(0.2)  # this process idles: whatever ran was someone else's
    others = other_processes_cores(before, 0.2)
    assert others is not None and others >= 0
    assert busy_warning(None, 1) is None and busy_warning(0.0, 1) is None
    warning = busy_warning(64.0, 1)
    assert warning is not None and "other processes kept 64.00 cores busy" in warning


def test_the_command_defaults_are_the_api_defaults() -> None:
    """The CLI spells the defaults out (it must not import torch to show --help)."""
    options = {param.name: param.default for param in main.commands["bench"].params}
    assert options["formats"] == ",".join(DEFAULT_FORMATS)
    assert options["backends"] == ",".join(BACKEND_ALIASES)
    assert options["warmup"] == BenchRequest.warmup and options["eval_images"] == BenchRequest.eval_images


def test_latency_stats_are_ordered_percentiles() -> None:
    stats = latency_stats(list(np.random.default_rng(0).exponential(10.0, size=200) + 1))
    ordered = [stats[key] for key in ("min", "median", "p90", "p95", "p99", "max")]
    assert ordered == sorted(ordered) and stats["min"] > 1


def test_plot_is_a_png(demo: tuple[BenchResult, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs the bench extra (matplotlib)")
    write_plot(demo[0], tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_random_weights_json_and_report(tmp_path: Path) -> None:
    """One realistic run of the command: export, time, JSON on stdout, the Markdown report."""
    report = tmp_path / "bench.md"
    code, stdout, _ = run(
        "bench", "--model", "unet-small", "--size", "64x64", "--formats", "pytorch,onnx-fp32",
        "--backends", "ort-cpu", "--runs", "3", "--warmup", "1", "--json", "--report", str(report),
    )  # fmt: skip
    assert code == 0
    data = json.loads(stdout)
    assert [(row["format"], row["status"]) for row in data["rows"]] == [
        ("pytorch", "ok"),
        ("onnx-fp32", "ok"),
    ]
    assert all(row["accuracy"] is None for row in data["rows"])
    assert data["accuracy_note"].startswith("- (random weights)")
    assert "- (random weights)" in report.read_text()
    code, _, stderr = run("bench", "--artifacts", str(tmp_path), "--report", str(report), "--force")
    assert_one_line_error(code, stderr, "no manifest.json there")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "unet-small", "--formats", "onnx-fp64"], "unknown format 'onnx-fp64'"),
        (["--model", "unet-small", "--backends", "ort-rocm"], "unknown backend ort-rocm"),
        (["--model", "unet-small", "--size", "64y64"], "--size"),
        (["--model", "unet-small", "--scenario", "offline", "--batch", "0"], "--batch '0'"),
        (["--model", "unet-small", "--scenario", "offline", "--batch", "a,b"], "--batch 'a,b'"),
        (["--model", "unet-small", "--batch", "4"], "single-stream runs batch 1"),
        (["--model", "unet-small", "--scenario", "multi-stream", "--batch", "2,4"], "one --batch"),
        (["--artifacts", "no/such/dir"], "no manifest.json there"),
        (["--model", "unet-small", "--runs", "3", "--seconds", "1"], "--runs or --seconds, not both"),
        (["--model", "unet-small", "--plot", "no/such/dir/p.png"], "does not exist"),
        (["--model", "unet-small", "--plot", "plot.svg"], "name a .png file"),
        (["--weights", "demo"], "pass --model NAME or --artifacts DIR"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str) -> None:
    code, _, stderr = run("bench", *args)
    assert code == 2
    assert_one_line_error(code, stderr, message)


def test_existing_outputs_are_not_overwritten(tmp_path: Path) -> None:
    for option, name in (("--report", "bench.md"), ("--plot", "bench.png")):
        existing = tmp_path / name
        existing.write_text("keep me")
        code, _, stderr = run("bench", "--model", "unet-small", option, str(existing))
        assert code == 2 and existing.read_text() == "keep me"
        assert_one_line_error(code, stderr, "already exists; pass --force")
    taken = tmp_path / "taken"
    taken.mkdir()
    code, _, stderr = run("bench", "--model", "unet-small", "--artifacts", str(taken))
    assert_one_line_error(code, stderr, "exists; with --model, bench exports into a new directory")


def test_plot_without_the_bench_extra_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if segexport[bench] were not installed
    code, _, stderr = run("bench", "--model", "unet-small", "--plot", str(tmp_path / "bench.png"))
    assert_one_line_error(code, stderr, "pip install 'segexport[bench]'", exit_code=3)
    assert not (tmp_path / "bench.png").exists()


def test_a_labelled_folder_scores_as_the_same_synthetic_images(
    demo: tuple[BenchResult, Path], tmp_path: Path
) -> None:
    """`--data DIR` reads, resizes and scores images exactly as the synthetic split does."""
    from PIL import Image

    from segexport.data import SYNTHETIC_CLASSES, SyntheticScenes

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for index, (image, labels) in enumerate(SyntheticScenes("eval", 2, (128, 128))):
        Image.fromarray(image).save(tmp_path / "images" / f"{index}.png")
        Image.fromarray(labels.astype(np.uint8), mode="L").save(tmp_path / "masks" / f"{index}.png")
    (tmp_path / "classes.txt").write_text("\n".join(SYNTHETIC_CLASSES))
    common = {"artifacts": demo[1], "formats": "onnx-int8", "backends": "ort-cpu", "runs": 1}
    (folder,) = run_bench(quick(data=str(tmp_path), **common)).rows
    (synthetic,) = run_bench(quick(**common)).rows
    assert folder.accuracy is not None and synthetic.accuracy is not None
    assert folder.accuracy["images"] == 2
    assert folder.accuracy["miou"] == pytest.approx(synthetic.accuracy["miou"], abs=1e-9)
    assert folder.accuracy["agreement"] == pytest.approx(synthetic.accuracy["agreement"], abs=1e-9)
    (tmp_path / "classes.txt").write_text("background\nobject\n")
    code, _, stderr = run("bench", "--artifacts", str(demo[1]), "--data", str(tmp_path), "--runs", "1")
    assert_one_line_error(code, stderr, "classes.txt names 2 classes; the model has 7")


def test_sizes_and_batches_outside_the_artifact_are_refused(demo: tuple[BenchResult, Path]) -> None:
    artifact = str(demo[1])
    code, _, stderr = run("bench", "--artifacts", artifact, "--size", "63x63")
    assert_one_line_error(code, stderr, "height 63 is not a multiple of 16")
    code, _, stderr = run("bench", "--artifacts", artifact, "--scenario", "offline", "--batch", "1,64")
    assert_one_line_error(code, stderr, "batch 64 is outside the verified range 1..16")


def test_unlisted_and_changed_files_are_rows_that_refuse(
    demo: tuple[BenchResult, Path], tmp_path: Path
) -> None:
    artifact = tmp_path / "unet-small"
    shutil.copytree(demo[1], artifact)
    (artifact / "model.int8.onnx").write_bytes((artifact / "model.int8.onnx").read_bytes() + b"x")
    (artifact / "model.fp32.engine").write_bytes(b"not an engine")
    request = quick(artifacts=artifact, formats="onnx-int8,engine-fp32", backends="ort-cpu,tensorrt")
    int8, engine = run_bench(request).rows
    assert int8.status == "unavailable" and "does not match the manifest" in str(int8.reason)
    assert engine.status == "unavailable" and "model.fp32.engine is not listed in manifest.json" in str(
        engine.reason
    )


def _spin_setting(runner: Any) -> str | None:
    options = runner.session.get_session_options()
    try:
        return str(options.get_session_config_entry("session.intra_op.allow_spinning"))
    except Exception:  # ONNX Runtime raises when the entry was never set: its default (spinning)
        return None


def test_sessions_interleaved_in_one_process_do_not_spin(demo: tuple[BenchResult, Path]) -> None:
    """Several ONNX Runtime rows: their sessions block instead of spin-waiting (an idle session's
    spinning threads would take the timed one's cores), and the report says so; a runner made
    outside `spin_waiting(False)` keeps ONNX Runtime's default."""
    from segexport.runtime.runners import OnnxRuntimeRunner, spin_waiting

    result, directory = demo
    assert "spin-waiting off" in result.header["timing_note"]
    with spin_waiting(False):
        quiet = OnnxRuntimeRunner(directory / "model.onnx", threads=1)
    assert _spin_setting(quiet) == "0"
    assert _spin_setting(OnnxRuntimeRunner(directory / "model.onnx", threads=1)) is None
