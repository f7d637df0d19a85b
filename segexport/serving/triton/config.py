"""The configs of a Triton model repository: Triton's `ModelConfig` schema (from `tritonclient`)
and its text format, the names, types and accelerator keys Triton accepts, the request and
the served file, and the network's config built from them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segexport.errors import SegexportError, first_line
from segexport.extras import missing_extra_error
from segexport.runtime.files import ONNX_FILES
from segexport.runtime.preprocessing import spatial_axes

FORMATS: dict[str, str | None] = {
    **{file.format_name: file.name for file in ONNX_FILES if file.for_tensorrt},
    "engine": None,  # the manifest's engine, or the one --engine names
}
ORT_TRT_PRECISIONS = {"fp16": "FP16", "int8": "INT8"}

# Every key the ONNX Runtime backend accepts for its TensorRT accelerator; any other fails the
# model load with "unknown parameter". From triton-inference-server/onnxruntime_backend
# src/onnxruntime.cc (commit 00fd3e87, 2026-06-29), the branch on `param_key`.
ORT_TENSORRT_KEYS = frozenset(
    {
        "precision_mode",
        "max_workspace_size_bytes",
        "trt_max_partition_iterations",
        "trt_min_subgraph_size",
        "int8_calibration_table_name",
        "int8_use_native_calibration_table",
        "trt_dla_enable",
        "trt_dla_core",
        "trt_engine_cache_enable",
        "trt_engine_cache_path",
        "trt_engine_cache_prefix",
        "trt_dump_subgraphs",
        "trt_force_sequential_engine_build",
        "trt_context_memory_sharing_enable",
        "trt_layer_norm_fp32_fallback",
        "trt_timing_cache_enable",
        "trt_timing_cache_path",
        "trt_force_timing_cache",
        "trt_detailed_build_log",
        "trt_build_heuristics_enable",
        "trt_sparsity_enable",
        "trt_builder_optimization_level",
        "trt_auxiliary_streams",
        "trt_tactic_sources",
        "trt_extra_plugin_lib_paths",
        "trt_profile_min_shapes",
        "trt_profile_max_shapes",
        "trt_profile_opt_shapes",
        "trt_cuda_graph_enable",
        "trt_dump_ep_context_model",
        "trt_ep_context_file_path",
        "trt_ep_context_embed_mode",
    }
)
ORT_PRECISION_MODES = {"FP32", "FP16", "BF16", "INT8"}

# numpy dtype names (as manifests record them) -> Triton's data types.
TRITON_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}

SIDECAR = "segexport.json"
VERSION = "1"
MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt_plan": "model.plan", "python": "model.py"}


def import_tritonclient(module: str) -> Any:
    """A `tritonclient` module, or the one-line 'triton' extra error when it is not installed."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        missing = missing_extra_error(error)
        if missing is None:
            raise
        raise missing from error


def model_config_module() -> Any:
    """Triton's `model_config_pb2`, or a one-line reason why it can't be imported."""
    try:
        return import_tritonclient("tritonclient.grpc.model_config_pb2")
    except SegexportError:
        raise
    except Exception as error:  # protobuf's VersionError: the gencode needs protobuf >= 6.33.5
        raise SegexportError(
            f"tritonclient's model_config_pb2 does not load with this protobuf ({first_line(error)}); "
            "pip install 'protobuf>=6.33.5'"
        ) from error


def render_config(config: dict[str, Any]) -> str:
    """A config (as the protobuf's JSON form) validated by `ModelConfig` and rendered as pbtxt."""
    from google.protobuf import json_format, text_format

    message = json_format.ParseDict(config, model_config_module().ModelConfig())
    return str(text_format.MessageToString(message))


def parse_config(text: str) -> dict[str, Any]:
    """A config.pbtxt parsed by `ModelConfig` (unknown fields and enum values fail), as a dict."""
    from google.protobuf import json_format, text_format

    message = text_format.Parse(text, model_config_module().ModelConfig())
    return dict(json_format.MessageToDict(message, preserving_proto_field_name=True))


@dataclass(frozen=True)
class TritonRequest:
    """What `segexport triton` asks for; None means "derive it from the artifact"."""

    artifacts: Path
    repo: Path
    name: str | None = None
    format: str = "onnx-fp32"
    engine: str | None = None
    max_batch: int | None = None
    instances: int = 1
    kind: str = "gpu"
    dynamic_batching: bool = False
    preferred_batch: tuple[int, ...] = ()
    max_queue_delay_us: int | None = None
    ort_trt: str | None = None
    cuda_graphs: bool = False
    ensemble: bool = False
    size: tuple[int, int] | None = None
    force: bool = False


@dataclass
class Served:
    """The artifact file being served and the facts about it the configs are built from."""

    file_name: str
    manifest: dict[str, Any]
    batch_range: tuple[int, int]
    batch_dynamic: bool
    engine: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def served_size(request: TritonRequest, served: Served) -> tuple[int, int]:
    """The (H, W) the ensemble resizes every image to: --size, else the export size, inside the range."""
    manifest = served.manifest
    shape = manifest["inputs"][0]["shape"]
    if len(manifest["inputs"]) != 1 or len(shape) != 4 or "preprocessing" not in manifest:
        raise SegexportError(
            "--ensemble serves image models (one [N, 3, H, W] input); this artifact is not one"
        )
    if request.size is not None:
        size = request.size
    else:
        _, height, width = (int(part) for part in str(manifest["export_shape"]).split("x"))
        size = (height, width)
    if served.engine is not None:
        profile = next(iter(served.engine["profile"].values()))
        rows, cols = spatial_axes(manifest["preprocessing"])
        low, high = (profile["min"][rows], profile["min"][cols]), (profile["max"][rows], profile["max"][cols])
        what = "the engine's profile"
    else:
        axes = manifest["dynamic_axes"]
        spatial = [shape[axis] for axis in spatial_axes(manifest["preprocessing"])]
        ranges = [axes[dim] if isinstance(dim, str) else (dim, dim) for dim in spatial]
        low, high = (ranges[0][0], ranges[1][0]), (ranges[0][1], ranges[1][1])
        what = "the artifact's range"
    inside = all(lo <= s <= hi for s, lo, hi in zip(size, low, high, strict=True))
    stride = int(manifest.get("size_rule", {}).get("divisible_by", 1))
    if not inside or any(s % stride for s in size):
        raise SegexportError(
            f"--size {size[0]}x{size[1]}: the served size must be inside {what} "
            f"({low[0]}x{low[1]} .. {high[0]}x{high[1]}) and divisible by {stride}"
        )
    return size


def _tensor(entry: dict[str, Any], batched: bool) -> dict[str, Any]:
    """A manifest input/output as a config tensor: the batch axis left to Triton, named axes -1."""
    dims = entry["shape"][1:] if batched else entry["shape"]
    dtype = entry["dtype"]
    if dtype not in TRITON_TYPES:
        raise SegexportError(f"tensor {entry['name']!r} of type {dtype} has no Triton data type here")
    return {
        "name": entry["name"],
        "data_type": TRITON_TYPES[dtype],
        "dims": [dim if isinstance(dim, int) else -1 for dim in dims],
    }


def network_config(name: str, request: TritonRequest, served: Served, max_batch: int) -> dict[str, Any]:
    """The network's config: platform, I/O from the manifest, batching, instances, accelerators."""
    manifest = served.manifest
    batched = max_batch > 0
    config: dict[str, Any] = {
        "name": name,
        "max_batch_size": max_batch,
        "input": [_tensor(entry, batched) for entry in manifest["inputs"]],
        "output": [_tensor(entry, batched) for entry in manifest["outputs"]],
        "instance_group": [
            {"kind": "KIND_GPU" if request.kind == "gpu" else "KIND_CPU", "count": request.instances}
        ],
    }
    if served.engine is not None:
        config["platform"] = "tensorrt_plan"
        config["default_model_filename"] = MODEL_FILES["tensorrt_plan"]
    else:
        config["backend"] = "onnxruntime"
        config["default_model_filename"] = MODEL_FILES["onnxruntime"]
    if request.dynamic_batching or request.preferred_batch or request.max_queue_delay_us is not None:
        batching: dict[str, Any] = {}
        if request.preferred_batch:
            batching["preferred_batch_size"] = sorted(set(request.preferred_batch))
        if request.max_queue_delay_us is not None:
            batching["max_queue_delay_microseconds"] = request.max_queue_delay_us
        config["dynamic_batching"] = batching
    if request.ort_trt is not None:
        config["optimization"] = {
            "execution_accelerators": {
                "gpu_execution_accelerator": [
                    {
                        "name": "tensorrt",
                        "parameters": ort_tensorrt_parameters(name, request, served, max_batch),
                    }
                ]
            }
        }
    if request.cuda_graphs:
        config["optimization"] = {
            "cuda": {"graphs": True, "graph_spec": _graph_specs(request, served, max_batch)}
        }
    return config


def ort_tensorrt_parameters(
    name: str, request: TritonRequest, served: Served, max_batch: int
) -> dict[str, str]:
    """The TensorRT accelerator's settings: precision, an explicit profile from the artifact's
    range (so the EP never rebuilds mid-stream), and an engine cache (a build takes minutes).

    A Q/DQ graph gets INT8 and never a calibration table (its scales are in the graph).
    """
    assert request.ort_trt is not None
    manifest = served.manifest
    entry = manifest["inputs"][0]
    axes = manifest["dynamic_axes"]
    opt_size = served_size(request, served) if request.ensemble or request.size else None
    top_batch = max(max_batch, 1)
    spatial = spatial_axes(manifest["preprocessing"])
    opt_batch = max(request.preferred_batch, default=1)

    def shape(pick: str) -> str:
        dims = []
        for index, dim in enumerate(entry["shape"]):
            if isinstance(dim, int):
                dims.append(dim)
            elif index == 0:
                dims.append({"min": 1, "opt": opt_batch, "max": top_batch}[pick])
            elif pick == "opt" and opt_size is not None and index in spatial:
                dims.append(opt_size[spatial.index(index)])
            elif pick == "opt":
                dims.append(_export_dim(manifest, spatial.index(index) + 1))
            else:
                dims.append(axes[dim][0 if pick == "min" else 1])
        return f"{entry['name']}:{'x'.join(map(str, dims))}"

    return {
        "precision_mode": ORT_TRT_PRECISIONS[request.ort_trt],
        "trt_profile_min_shapes": shape("min"),
        "trt_profile_opt_shapes": shape("opt"),
        "trt_profile_max_shapes": shape("max"),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"/tmp/triton-ort-trt-cache/{name}",
    }


def _export_dim(manifest: dict[str, Any], position: int) -> int:
    """The export shape's B (0), H (1) or W (2)."""
    return int(str(manifest["export_shape"]).split("x")[position])


def _graph_specs(request: TritonRequest, served: Served, max_batch: int) -> list[dict[str, Any]]:
    """One CUDA graph per batch size Triton will mostly run, at the served size (graphs are per shape).

    Without batching (max_batch_size 0) Triton wants one graph of batch_size 0, whose shape
    then includes the model's own batch axis (model_config.proto, GraphSpec.batch_size).
    """
    size = served_size(request, served)
    entry = served.manifest["inputs"][0]
    if max_batch == 0:
        return [{"batch_size": 0, "input": {entry["name"]: {"dim": [1, *entry["shape"][1:2], *size]}}}]
    batches = sorted({1, *request.preferred_batch, max_batch})
    dims = [*entry["shape"][1:2], *size]
    return [{"batch_size": batch, "input": {entry["name"]: {"dim": dims}}} for batch in batches]


def network_file(config: dict[str, Any]) -> str:
    return str(config["default_model_filename"])
