"""The engine record and the checks made before TensorRT sees an engine: is TensorRT
importable, which GPU is this, may an engine built as its manifest record says run on
this machine, do input shapes fit its optimization profile.

None of it needs TensorRT (only cuda-python, for `current_gpu`), so `doctor`, backend
selection and `build` read records and explain refusals on machines without it;
`segexport.runtime.engine` holds the TensorRT runner itself.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segexport.errors import SegexportError, UnavailableError, first_line
from segexport.runtime.artifacts import vouched_bytes
from segexport.runtime.cuda import Cuda, import_cudart

# Compute capability of the oldest architecture that `--hardware-compat ampere+` engines run on.
AMPERE = (8, 0)


def tensorrt_unavailable_reason() -> str | None:
    """Why `import tensorrt` would fail here, or None when it works."""
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed"
    try:
        importlib.import_module("tensorrt")
    except Exception as error:  # a broken install raises ImportError, OSError, ...
        return f"import tensorrt failed: {first_line(error)}"
    return None


def require_tensorrt() -> None:
    """Raise the one-line reason when TensorRT can't be imported.

    Callers then `import tensorrt as trt` themselves, a static import that
    `make typecheck-trt` checks against each release's real bindings.
    """
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise UnavailableError(f"TensorRT is not available on this machine ({reason})")


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        major, minor = self.compute_capability
        return {"name": self.name, "compute_capability": f"{major}.{minor}"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuIdentity:
        major, minor = (int(part) for part in str(data["compute_capability"]).split("."))
        return cls(str(data["name"]), (major, minor))


def current_gpu(device: int = 0) -> GpuIdentity:
    props = Cuda(import_cudart()).call("cudaGetDeviceProperties", device)
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return GpuIdentity(name.rstrip("\x00").strip(), (int(props.major), int(props.minor)))


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def compatibility_problem(record: dict[str, Any], tensorrt_version: str, gpu: GpuIdentity) -> str | None:
    """Why an engine built as `record` says must not be loaded here, or None.

    Plain engines need the exact TensorRT version and the same GPU model. Version-
    compatible engines (TensorRT >= 8.6) run on the release that built them or any later
    one, across major versions too (NVIDIA's "Version Compatibility" guide: 10.x engines
    run on 11.x). `ampere+` hardware-compatible engines run on compute capability >= 8.0.
    """
    built_with = str(record["tensorrt"])
    if record.get("version_compatible"):
        if _release(tensorrt_version) < _release(built_with):
            return (
                f"built version-compatible with TensorRT {built_with}; this machine has the older "
                f"{tensorrt_version} (such engines run on {built_with} or later)"
            )
    elif built_with != tensorrt_version:
        return (
            f"built with TensorRT {built_with}, this machine has {tensorrt_version}; engines run "
            "only on the TensorRT release that built them (rebuild here, or build with --version-compatible)"
        )
    built_gpu = GpuIdentity.from_dict(record["gpu"])
    if record.get("hardware_compat") == "ampere+":
        if gpu.compute_capability < AMPERE:
            return (
                f"built for Ampere and later GPUs; this {gpu.name} has compute capability "
                f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
            )
    elif built_gpu != gpu:
        return (
            f"built for {built_gpu.name} (sm {built_gpu.to_dict()['compute_capability']}), this machine has "
            f"{gpu.name} (sm {gpu.to_dict()['compute_capability']}); rebuild the engine on this device "
            "(or build with --hardware-compat ampere+)"
        )
    return None


def profile_problem(record: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Why input shapes fall outside the engine's optimization profile, or None."""
    for name, shape in shapes.items():
        profile = record["profile"].get(name)
        if profile is None:
            return f"the engine has no input {name!r}; it takes {', '.join(record['profile'])}"
        low, high = profile["min"], profile["max"]
        if len(shape) != len(low) or any(
            not lo <= s <= hi for s, lo, hi in zip(shape, low, high, strict=True)
        ):
            return (
                f"input {name} of shape {'x'.join(map(str, shape))} is outside the range the engine "
                f"was built for ({'x'.join(map(str, low))} .. {'x'.join(map(str, high))})"
            )
    return None


def engine_record(manifest: dict[str, Any], file_name: str) -> dict[str, Any]:
    record = manifest.get("engines", {}).get(file_name)
    if record is None:
        raise SegexportError(f"{file_name}: the manifest has no build record for it; refusing to load it")
    return dict(record)


def read_vouched_engine(
    directory: Path, file_name: str, manifest: dict[str, Any], tensorrt_version: str, gpu: GpuIdentity
) -> bytes:
    """The engine's bytes, only when the checksum and the build record both vouch for this machine."""
    data = vouched_bytes(directory, file_name, manifest)
    problem = compatibility_problem(engine_record(manifest, file_name), tensorrt_version, gpu)
    if problem:
        raise SegexportError(f"{directory / file_name}: {problem}; refusing to deserialize it")
    return data
