"""`segexport doctor`: what this machine can do, and why not where it can't.

Deployment fails most often on the environment (no TensorRT, CPU-only ONNX Runtime, a
CUDA build of torch without a driver), so the report names each piece with its version
or the reason it is missing, and derives the stages that can run here.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from segexport import __version__
from segexport.errors import SegexportError
from segexport.runtime.cuda import Cuda, import_cudart
from segexport.runtime.engine_records import current_gpu, tensorrt_unavailable_reason
from segexport.runtime.ort_gpu import CUDA, TENSORRT, gpu_providers


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def tensorrt_report() -> dict[str, Any]:
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        return {"available": False, "version": None, "reason": reason}
    import tensorrt as trt

    return {"available": True, "version": str(trt.__version__), "reason": None}


def cuda_report() -> dict[str, Any]:
    """Driver, bindings and devices as cuda-python sees them (the runtime's own view, not torch's).

    Bindings built for a newer CUDA major than the driver's (cuda-python 13 on JetPack 6's
    CUDA 12) fail at the first call with a bare "insufficient driver": the versions say why.
    """
    try:
        cudart = import_cudart()
        versions = Cuda(cudart).versions()
        if versions["problem"]:
            return {"available": False, "devices": [], "reason": versions["problem"], "versions": versions}
        error, count = cudart.cudaGetDeviceCount()
        if error != cudart.cudaError_t.cudaSuccess or not count:
            reason = f"no usable CUDA device ({getattr(error, 'name', error)})"
            return {"available": False, "devices": [], "reason": reason, "versions": versions}
        devices = [current_gpu(index).to_dict() for index in range(int(count))]
    except SegexportError as problem:
        return {"available": False, "devices": [], "reason": str(problem), "versions": None}
    return {"available": True, "devices": devices, "reason": None, "versions": versions}


def onnxruntime_report() -> dict[str, Any]:
    import onnxruntime

    gpu = gpu_providers()
    backends = {"onnxruntime-cuda": CUDA in gpu, "onnxruntime-tensorrt": TENSORRT in gpu}
    return {
        "version": onnxruntime.__version__,
        "providers": list(onnxruntime.get_available_providers()),
        "gpu_backends": [name for name, offered in backends.items() if offered],
    }


def torch_report() -> dict[str, Any]:
    """torch is only needed to export; a missing or broken torch still leaves the runtime usable."""
    try:
        import torch
    except Exception as error:  # a broken CUDA build can raise OSError on import
        return {"version": None, "cuda": False, "reason": f"import torch failed: {error}"}
    cuda = bool(torch.cuda.is_available())
    return {
        "version": torch.__version__,
        "cuda": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "reason": None,
    }


def environment_report() -> dict[str, Any]:
    """Versions, devices, and the stages they allow here."""
    tensorrt = tensorrt_report()
    cuda = cuda_report()
    ort = onnxruntime_report()
    torch_info = torch_report()
    gpu_ort = bool(ort["gpu_backends"])
    tensorrt_here = (tensorrt["available"] and cuda["available"], tensorrt["reason"] or cuda["reason"])
    can = {
        "export ONNX (segexport onnx, quantize)": (torch_info["version"] is not None, torch_info["reason"]),
        "run ONNX on the CPU": (True, None),
        "run ONNX on a GPU": (gpu_ort, None if gpu_ort else "onnxruntime has no CUDA provider"),
        "build TensorRT engines (segexport trt)": tensorrt_here,
        "run TensorRT engines": tensorrt_here,
    }
    return {
        "segexport": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "tensorrt": tensorrt,
        "cuda": cuda,
        "cuda_python": _package_version("cuda-python") or _package_version("cuda-bindings"),
        "onnxruntime": ort,
        "onnx": _package_version("onnx"),
        "torch": torch_info,
        "capabilities": [{"task": task, "ok": ok, "reason": reason} for task, (ok, reason) in can.items()],
    }


def format_report(report: dict[str, Any]) -> str:
    tensorrt, cuda, torch_info = report["tensorrt"], report["cuda"], report["torch"]
    devices = ", ".join(f"{d['name']} (sm {d['compute_capability']})" for d in cuda["devices"])
    versions = cuda.get("versions") or {}
    cuda_versions = (
        f" (driver CUDA {versions['driver'] or 'none'}, bindings built for CUDA {versions['bindings']})"
        if versions
        else ""
    )
    ort = report["onnxruntime"]
    gpu_backends = ", ".join(ort.get("gpu_backends") or []) or "none (CPU-only onnxruntime)"
    lines = [
        f"segexport {report['segexport']} on Python {report['python']}, {report['platform']}",
        f"TensorRT:     {tensorrt['version'] or 'no - ' + str(tensorrt['reason'])}",
        f"CUDA:         {devices or 'no - ' + str(cuda['reason'])}",
        f"cuda-python:  {report['cuda_python'] or 'not installed'}{cuda_versions}",
        f"onnxruntime:  {ort['version']} ({', '.join(ort['providers'])}); GPU backends: {gpu_backends}",
        f"onnx:         {report['onnx'] or 'not installed (the export extra; not needed to run)'}",
        f"torch:        {torch_info['version'] or 'no - ' + str(torch_info['reason'])}"
        + (f" (CUDA: {torch_info['cuda_device']})" if torch_info.get("cuda") else " (CPU only)"),
        "can do here:",
    ]
    for item in report["capabilities"]:
        mark = "yes" if item["ok"] else "no "
        lines.append(f"  [{mark}] {item['task']}" + ("" if item["ok"] else f": {item['reason']}"))
    return "\n".join(lines)
