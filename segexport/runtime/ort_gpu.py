"""ONNX Runtime on NVIDIA GPUs: the CUDA provider with IO binding, and the TensorRT provider.

Both are `Runner`s (`name`, `output_names`, `infer(feeds) -> outputs`) for the backend table
(`onnxruntime-cuda`, `onnxruntime-tensorrt`); they need the `onnxruntime-gpu` wheel in place
of `onnxruntime`.

ONNX Runtime falls back to the CPU without an error when a provider cannot load (missing
CUDA/cuDNN/TensorRT libraries, a CPU-only wheel): after creating a session each runner reads
`session.get_providers()` and refuses to pretend, naming the providers it really got.

* `OrtCudaRunner` binds inputs and outputs to device memory it allocates once per shape
  (`OrtValue.ortvalue_from_shape_and_type(..., "cuda", id)`, IO binding): one upload per
  input, the graph on the GPU, and a download only of the outputs asked for (a mask head's
  ids instead of the logits). `run_on_device` leaves the outputs on the GPU for a next stage.
  (ONNX Runtime docs, "I/O Binding": without it inputs are copied in and outputs out on
  every `run`.)
* `OrtTensorRTRunner` uses the TensorRT provider with an engine cache keyed by the model's
  sha256, the ONNX Runtime and TensorRT versions and the GPU, and explicit profile shapes
  from the manifest (`trt_profile_min_shapes/opt/max`: without them the provider rebuilds its
  engine whenever a new shape exceeds the ones seen, mid-stream). FP16 graphs set
  `trt_fp16_enable`; INT8 Q/DQ graphs set `trt_int8_enable` and no calibration table (the
  scales are in the graph). (ONNX Runtime docs, "TensorRT Execution Provider":
  configurations, engine caching, explicit shape ranges.)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segexport.errors import SegexportError, UnavailableError
from segexport.runtime.runners import OnnxRuntimeRunner

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"


def gpu_providers() -> list[str]:
    """The GPU providers this ONNX Runtime build offers (empty for the CPU-only wheel)."""
    import onnxruntime as ort

    return [p for p in ort.get_available_providers() if p in (TENSORRT, CUDA)]


def _open(model_path: Path, providers: list[Any], wanted: str, threads: int | None) -> Any:
    """An ONNX Runtime session that really runs on `wanted`, or `UnavailableError` saying what it got."""
    import onnxruntime as ort

    with warnings.catch_warnings():  # "provider not available": the check below says it better
        warnings.filterwarnings("ignore", message="Specified provider", category=UserWarning)
        session = OnnxRuntimeRunner(model_path, threads=threads, providers=providers).session
    got = session.get_providers()
    if not got or got[0] != wanted:
        available = ", ".join(ort.get_available_providers())
        raise UnavailableError(
            f"{model_path.name}: ONNX Runtime gave the session {', '.join(got)} instead of {wanted} "
            f"(this onnxruntime {ort.__version__} offers {available}; {wanted} needs the onnxruntime-gpu "
            "wheel and its CUDA libraries)"
        )
    return session


class OrtCudaRunner:
    """ONNX Runtime's CUDA provider with inputs and outputs in preallocated device memory."""

    def __init__(
        self,
        model_path: Path,
        *,
        device_id: int = 0,
        outputs: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        provider = (CUDA, {"device_id": device_id})
        self.session = _open(Path(model_path), [provider, CPU], CUDA, threads)
        self.name = f"onnxruntime-cuda:{Path(model_path).name}"
        self.providers = list(self.session.get_providers())
        self._device_id = device_id
        every = [o.name for o in self.session.get_outputs()]
        unknown = sorted(set(outputs or ()) - set(every))
        if unknown:
            raise SegexportError(f"{self.name}: no output {', '.join(unknown)}; it has {', '.join(every)}")
        self._outputs = list(outputs) if outputs else every
        self._types = {o.name: o.type for o in (*self.session.get_inputs(), *self.session.get_outputs())}
        self._binding = self.session.io_binding()
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._values: dict[str, Any] = {}

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def _bind(self, feeds: dict[str, np.ndarray]) -> None:
        """(Re)allocate device values when the input shapes change; upload the inputs."""
        import onnxruntime as ort

        shapes = {name: tuple(array.shape) for name, array in feeds.items()}
        if shapes != self._shapes:
            self._binding.clear_binding_inputs()
            self._binding.clear_binding_outputs()
            self._values = {}
            for name, array in feeds.items():
                value = ort.OrtValue.ortvalue_from_shape_and_type(
                    array.shape, array.dtype, "cuda", self._device_id
                )
                self._binding.bind_ortvalue_input(name, value)
                self._values[name] = value
            for name in self._outputs:  # shapes unknown ahead: ORT allocates them on the device
                self._binding.bind_output(name, "cuda", self._device_id)
            self._shapes = shapes
        for name, array in feeds.items():
            self._values[name].update_inplace(np.ascontiguousarray(array))

    def run_on_device(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        """Outputs as OrtValues in GPU memory (valid until the next call), for a next GPU stage."""
        self._bind(feeds)
        self.session.run_with_iobinding(self._binding)
        return dict(zip(self._outputs, self._binding.get_outputs(), strict=True))

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in self.run_on_device(feeds).items()}


def tensorrt_version() -> str:
    """The TensorRT release that ONNX Runtime's provider would load, as far as Python can tell."""
    for package in ("tensorrt", "tensorrt-cu13-libs", "tensorrt-cu12-libs", "tensorrt-libs"):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def profile_shapes(manifest: dict[str, Any]) -> dict[str, str]:
    """`trt_profile_*_shapes` from the manifest's verified ranges: `image:BxCxHxW` min/opt/max."""
    axes = manifest["dynamic_axes"]
    (image,) = [i for i in manifest["inputs"] if i["name"] == "image"] or [None]
    if image is None or "height" not in axes:
        raise SegexportError("explicit TensorRT profiles need an image model's manifest")
    batch, height, width = (int(v) for v in manifest["export_shape"].split("x"))
    picks = {
        "min": {"batch": axes["batch"][0], "height": axes["height"][0], "width": axes["width"][0]},
        "opt": {"batch": batch, "height": height, "width": width},
        "max": {"batch": axes["batch"][1], "height": axes["height"][1], "width": axes["width"][1]},
    }
    # By axis name, so NCHW and raw-frame NHWC inputs read alike; fixed dims (channels) as declared.
    low, opt, high = (
        [int(d) if isinstance(d, int) else values[d] for d in image["shape"]] for values in picks.values()
    )
    return {
        key: "image:" + "x".join(str(v) for v in dims)
        for key, dims in (("min", low), ("opt", opt), ("max", high))
    }


def engine_cache_key(model_sha256: str, ort_version: str, trt_version: str, gpu: str) -> str:
    """A directory name that changes whenever a cached engine would not be valid any more."""
    gpu_part = re.sub(r"[^A-Za-z0-9.]+", "-", gpu).strip("-") or "gpu"
    digest = hashlib.sha256(f"{model_sha256}|{ort_version}|{trt_version}|{gpu}".encode()).hexdigest()[:12]
    return f"{model_sha256[:16]}-ort{ort_version}-trt{trt_version}-{gpu_part}-{digest}"


def tensorrt_options(
    manifest: dict[str, Any], model_file: str, cache_root: Path, gpu: str, device_id: int = 0
) -> dict[str, Any]:
    """The TensorRT provider's options for one artifact file (precision from its name)."""
    import onnxruntime as ort

    sha256 = manifest["files"][model_file]["sha256"]
    cache = cache_root / engine_cache_key(sha256, ort.__version__, tensorrt_version(), gpu)
    shapes = profile_shapes(manifest)
    return {
        "device_id": device_id,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": ".fp16." in model_file,
        # Q/DQ graphs carry their scales: INT8 on, no calibration table.
        "trt_int8_enable": ".int8." in model_file,
        "trt_int8_use_native_calibration_table": False,
        "trt_profile_min_shapes": shapes["min"],
        "trt_profile_opt_shapes": shapes["opt"],
        "trt_profile_max_shapes": shapes["max"],
    }


class OrtTensorRTRunner(OnnxRuntimeRunner):
    """ONNX Runtime's TensorRT provider (CUDA for what TensorRT does not take), engines cached."""

    def __init__(
        self,
        model_path: Path,
        manifest: dict[str, Any],
        *,
        cache_root: Path,
        gpu: str,
        device_id: int = 0,
        threads: int | None = None,
    ) -> None:
        model_path = Path(model_path)
        self.options = tensorrt_options(manifest, model_path.name, cache_root, gpu, device_id)
        Path(self.options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        providers = [(TENSORRT, self.options), (CUDA, {"device_id": device_id}), CPU]
        self.session = _open(model_path, providers, TENSORRT, threads)
        self.providers = list(self.session.get_providers())
        self.name = f"onnxruntime-tensorrt:{model_path.name}"
