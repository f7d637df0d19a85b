"""`segexport bench`'s outputs: the Markdown table (printed and `--report`) and the PNG plot.

numpy-free formatting of a `BenchResult`; the plot needs matplotlib (`segexport[bench]`),
drawn with the Agg backend so that it works without a display.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from segexport.bench.options import PYTORCH
from segexport.bench.rows import Row
from segexport.bench.run import BenchResult
from segexport.errors import SegexportError
from segexport.runtime.artifacts import atomic_write
from segexport.runtime.outputs import check_output


def format_report(result: BenchResult) -> str:
    """The header (settings, machine), the table, then the reasons and warnings it points to."""
    header = result.header
    machine = header["machine"]
    height, width = header["size"]
    timing = f"{header['runs']} runs" if header["runs"] else f"{header['seconds_per_format']:g} s"
    prepared = header.get("prepared_seconds") or {}
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    lines = [
        f"# segexport bench: {header['model']}, {header['scenario']}",
        "",
        f"- scenario: {header['scenario']} (headline: {header['headline']}): {header['scenario_note']}",
        f"- input {height}x{width}, batch {','.join(map(str, header['batches']))}, "
        f"{header['threads']} threads, "
        f"{header['warmup']} warm-up runs (not counted), then {timing} per format, formats interleaved "
        "round by round, PyTorch eager in the same rounds",
        f"- accuracy: {header['accuracy_note']}",
        f"- memory: {header['memory_note']}",
        f"- timing: {header['timing_note']}",
        f"- machine: {machine['cpu']}, {machine['usable_cores']} of {machine['cores']} cores usable; "
        f"GPU: {machine['gpu']}; ONNX Runtime providers: {', '.join(machine['onnxruntime_providers'])}",
        f"- versions: {versions}",
    ]
    if prepared:
        done = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in prepared.items())
        nodes = header["onnx_nodes"]
        lines.append(
            f"- prepared here: {done}; ONNX nodes {nodes['raw']} raw -> {nodes['simplified']} simplified"
        )
    lines += ["", *_table(result.rows, header["scenario"]), ""]
    profiles = profile_lines(result.rows)
    if profiles:
        lines += [*profiles, ""]
    notes = _notes(result.rows)
    if header.get("machine_warning"):
        notes.append(f"warning: {header['machine_warning']}")
    if notes:
        lines += [*notes, ""]
    lines.append(f"bench took {header['seconds']:.1f} s")
    return "\n".join(lines) + "\n"


def _table(rows: list[Row], scenario: str) -> list[str]:
    gpu = any(row.gpu_split for row in rows)
    columns = [
        "format",
        "backend",
        "ran on",
        "status",
        "MB",
        "batch",
        "min ms",
        "mean ms",
        "median ms",
        "p90 ms",
        "p95 ms",
        "p99 ms",
        "FPS",
        "vs PyTorch",
        "peak mem MB",
        "mIoU",
        "agreement",
    ]
    if gpu:
        columns += ["enqueue ms", "H2D / compute / D2H"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    footnotes = _footnote_numbers(rows)
    for row in rows:
        latency = row.latency_ms or {}
        status = row.status + (f" [{footnotes[id(row)]}]" if id(row) in footnotes else "")
        accuracy = row.accuracy or {}
        cells = [
            row.format,
            row.backend,
            row.backend_used or "-",
            status,
            _number(row.size_mb, ".1f"),
            _number(row.batch, "d"),
            *(_number(latency.get(key), ".2f") for key in ("min", "mean", "median", "p90", "p95", "p99")),
            _number(row.throughput_fps, ".1f"),
            "-" if row.vs_pytorch is None else f"{row.vs_pytorch:.2f}x",
            _number(row.peak_mem_mb, ".0f"),
            _number(accuracy.get("miou"), ".4f"),
            _percent(accuracy.get("agreement"), row),
        ]
        if gpu:
            cells += [_number(row.enqueue_ms, ".3f"), "n/a (see notes)" if row.gpu_split else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if scenario == "offline":
        lines += ["", "offline, every batch tried (FPS):"]
        for row in rows:
            if row.batches:
                tried = ", ".join(f"batch {b}: {f['throughput_fps']:.1f}" for b, f in row.batches.items())
                lines.append(f"- {row.format} on {row.backend}: {tried}")
    return lines


PROFILE_TOP = 8  # op types listed per row; the rest summed as "other"


def profile_lines(rows: list[Row]) -> list[str]:
    """`--profile`: per row, the op types that take the most kernel time, with their shares."""
    lines = []
    for row in rows:
        profile = row.profile
        if not profile:
            continue
        if "ops" not in profile:
            lines.append(f"- {row.format} on {row.backend}: {profile['reason']}")
            continue
        ops = list(profile["ops"].items())
        shown = ", ".join(f"{op} {f['share']:.0%} ({f['ms']:.1f} ms)" for op, f in ops[:PROFILE_TOP])
        rest = sum(f["share"] for _, f in ops[PROFILE_TOP:])
        lines.append(
            f"- {row.format} on {row.backend}: kernels {profile['kernel_ms']:.1f} ms of "
            f"{profile['run_ms']:.1f} ms per run: {shown}" + (f", other {rest:.0%}" if rest else "")
        )
    if lines:
        lines.insert(0, "per-op profile (ONNX Runtime's profiler, share of kernel time per op type):")
    return lines


def _footnote_numbers(rows: list[Row]) -> dict[int, int]:
    """A footnote per distinct reason (many rows share one: a backend missing on this machine)."""
    numbers: dict[str, int] = {}
    for row in rows:
        if row.reason:
            numbers.setdefault(row.reason, len(numbers) + 1)
    return {id(row): numbers[row.reason] for row in rows if row.reason}


def _notes(rows: list[Row]) -> list[str]:
    footnotes = _footnote_numbers(rows)
    lines, seen = [], set()
    for row in rows:
        if row.reason and row.reason not in seen:
            seen.add(row.reason)
            lines.append(f"[{footnotes[id(row)]}] {row.reason}")
    lines += [f"warning: {row.format} on {row.backend}: {row.warning}" for row in rows if row.warning]
    split = next((row.gpu_split for row in rows if row.gpu_split), None)
    if split is not None:
        lines.append(f"H2D / compute / D2H: {split['reason']}")
    elif rows:
        lines.append("GPU columns (enqueue, H2D / compute / D2H): no GPU backend ran here")
    return lines


def _number(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _percent(value: float | None, row: Row) -> str:
    if value is not None:
        return f"{value:.4%}"
    return "- (random weights)" if row.latency_ms is not None and row.accuracy is None else "-"


def write_plot(result: BenchResult, path: Path) -> None:
    """Latency against mIoU (or argmax agreement), one point per row that ran, with error bars
    from min to p99; a latency chart when no row has accuracy figures (random weights)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ran = [row for row in result.rows if row.latency_ms]
    metric = "miou" if any((row.accuracy or {}).get("miou") is not None for row in ran) else "agreement"
    scored = [row for row in ran if (row.accuracy or {}).get(metric) is not None]
    header = result.header
    headline = "median" if header["scenario"] == "offline" else header["headline"]
    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    for position, row in enumerate(ran):
        latency: dict[str, Any] = row.latency_ms or {}
        x = latency[headline]
        y = (row.accuracy or {})[metric] if scored else position
        errors = [[x - latency["min"]], [latency["p99"] - x]]
        marker = "s" if row.format == PYTORCH else "o"
        axes.errorbar(x, y, xerr=errors, fmt=marker, capsize=4, label=f"{row.format} / {row.backend}")
    axes.set_xlabel(f"{headline} latency per query, ms (bars: min .. p99)")
    if scored:
        axes.set_ylabel(
            "mIoU (synthetic eval split)" if metric == "miou" else "argmax agreement with PyTorch FP32"
        )
    else:
        axes.set_yticks(range(len(ran)), [f"{row.format} / {row.backend}" for row in ran])
        axes.set_ylabel("(random weights: timed only)")
    height, width = header["size"]
    axes.set_title(
        f"{header['model']}, {header['scenario']}, {height}x{width}, {header['threads']} threads\n"
        f"{header['machine']['cpu']}",
        fontsize=9,
    )
    spread = [(row.latency_ms or {})["min"] for row in ran]
    if spread and max(spread) > 20 * min(spread):
        axes.set_xscale("log")
    axes.grid(True, alpha=0.3)
    if ran:
        axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    atomic_write(path, lambda target: figure.savefig(target, format="png"))
    plt.close(figure)


def check_outputs(
    report: Path | None, plot: Path | None, force: bool, reads: Iterable[Path | None] = ()
) -> None:
    """Refuse bad output paths before any work: wrong suffix, missing folder, an existing file,
    or (the output policy) a path over what bench reads (`reads`)."""
    for path, suffix, option in ((report, ".md", "--report"), (plot, ".png", "--plot")):
        if path is None:
            continue
        if path.suffix != suffix:
            raise SegexportError(f"{option} {path}: name a {suffix} file")
        if not path.parent.is_dir():
            raise SegexportError(f"{option} {path}: the folder {path.parent} does not exist")
        check_output(path, force, directory=False, reads=reads, option=option)


def write_report(result: BenchResult, path: Path) -> None:
    atomic_write(path, lambda target: target.write_text(format_report(result)))
