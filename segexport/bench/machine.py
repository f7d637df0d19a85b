"""What `segexport bench` measures on and around: usable cores, CPU time other processes took,
the machine and GPU description in the header, and the process memory probes for peak_mem_mb.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segexport.errors import SegexportError, first_line

BUSY_CORES = 0.25  # CPU (in cores) that other processes may take during the timed runs unwarned


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_seconds() -> tuple[float, float] | None:
    """CPU seconds every process has used since boot, and this process's (None off Linux)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - fields[4]  # user .. steal, less idle and iowait
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return busy / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime


def other_processes_cores(before: tuple[float, float] | None, wall: float) -> float | None:
    """How many cores other processes kept busy, on average, since `before`."""
    after = cpu_seconds()
    if before is None or after is None or wall <= 0:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return round(max(others, 0.0) / wall, 2)


def busy_warning(others: float | None, threads: int) -> str | None:
    """A warning when other processes took CPU the benchmark needed: contention makes every
    timing noisy, and PyTorch's OpenMP threads (spinning barriers) suffer most."""
    spare = usable_cores() - threads  # cores the benchmark leaves to others
    if others is None or others <= max(BUSY_CORES, spare):
        return None
    return (
        f"other processes kept {others:.2f} cores busy during the timed runs ({threads} threads "
        f"here, {spare + threads} usable cores): timings are noisy and CPU rows, PyTorch most, "
        "run slower than on a quiet machine"
    )


def machine_info(threads: int) -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, GPU and clocks where readable, versions."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }
    for module in ("onnx", "tensorrt"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # not installed, or a broken install: not part of this machine's stack
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "threads": threads,
        "os": platform.platform(),
        "gpu": _gpu_note(),
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "versions": versions,
    }


def _gpu_note() -> str:
    """GPU name, clocks and driver from nvidia-smi, or why there is none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "none (no nvidia-smi)"
    query = "name,clocks.sm,clocks.max.sm,clocks.mem,driver_version"
    try:
        output = subprocess.run(
            [smi, f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"unreadable ({first_line(error)})"
    return output or "none (nvidia-smi lists no GPU)"


def reset_peak() -> bool:
    """Reset this process's peak resident memory (Linux: "5" into clear_refs); False if impossible.

    Free heap pages go back to the OS first (glibc's malloc_trim), so that a format's
    allocations show up instead of silently reusing memory an earlier stage freed.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise SegexportError(f"/proc/self/status has no {key}")


def process_peak_mb() -> float:
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
