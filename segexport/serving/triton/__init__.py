"""Triton Inference Server model repositories from a segexport artifact, and their offline check.

`write_repository` turns one artifact file (an ONNX of any precision, or a TensorRT engine)
into `REPO/NAME/config.pbtxt` + `REPO/NAME/1/model.onnx|model.plan`, optionally with a
three-step ensemble (Python-backend pre-processing -> network -> Python-backend
post-processing) that takes raw uint8 images of any size and returns masks at that size.

Configs are `ModelConfig` protobufs (Triton's own schema, from `tritonclient`) rendered with
protobuf's text format, so a field or enum Triton does not know fails here, not at load time.
`check_repository` re-reads what was written and checks what parsing cannot: I/O against the
model file, `max_batch_size` against the artifact's range or the engine's profile, accelerator
keys against the ONNX Runtime backend's list, and the ensemble's wiring.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segexport.errors import SegexportError, first_line
from segexport.extras import missing_extra_error
from segexport.runtime.artifacts import (
    check_writable_target,
    read_manifest,
    sha256_file,
    staged_directory,
    vouched_path,
)
from segexport.runtime.files import ONNX_FILES
from segexport.runtime.geometry import mask_dtype

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

# Model names become directory names and URL path segments (/v2/models/NAME); a leading dot
# hides the directory and a slash or space breaks one or the other.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

_TRITON_TYPES = {
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
# ONNX Runtime's type strings for the same types, for checking configs against a model file.
_ORT_TYPES = {f"tensor({ort})": triton for ort, triton in [
    ("bool", "TYPE_BOOL"), ("uint8", "TYPE_UINT8"), ("uint16", "TYPE_UINT16"), ("int8", "TYPE_INT8"),
    ("int16", "TYPE_INT16"), ("int32", "TYPE_INT32"), ("int64", "TYPE_INT64"), ("float16", "TYPE_FP16"),
    ("float", "TYPE_FP32"), ("double", "TYPE_FP64"),
]}  # fmt: skip

SIDECAR = "segexport.json"
VERSION = "1"
MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt_plan": "model.plan", "python": "model.py"}
# What the Python-backend steps need of segexport, copied beside their model.py (see _vendor_runtime).
_VENDORED = ("errors.py", "runtime/preprocessing.py", "runtime/geometry.py")

Progress = Callable[[str], None]


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


def write_repository(request: TritonRequest, progress: Progress | None = None) -> dict[str, Any]:
    """Write the model directories the request describes into `request.repo`; return a summary.

    Nothing is written unless every model directory can be: each one is staged in a hidden
    sibling and renamed into place, and an existing one is replaced only with `force`.
    """
    say = progress or (lambda _message: None)
    model_config_module()  # before any work: the schema every config is checked against
    if request.format not in FORMATS:
        raise SegexportError(f"unknown format {request.format!r}; choose from {', '.join(FORMATS)}")
    manifest = read_manifest(request.artifacts)
    served = describe_served(request, manifest)
    name = default_name(manifest, request.format, served.file_name) if request.name is None else request.name
    check_name(name)
    max_batch = choose_max_batch(request, served)
    check_options(request, served, max_batch)
    source = vouched_path(request.artifacts, served.file_name, manifest)

    network = network_config(name, request, served, max_batch)
    models: dict[str, tuple[dict[str, Any], Callable[[Path], None]]] = {
        name: (
            network,
            lambda version: _copy_model(source, version / network_file(network), manifest, served),
        )
    }
    if request.ort_trt is not None:
        served.notes.append(
            "the TensorRT accelerator builds its engine when the model loads (minutes) and caches it under "
            f"/tmp/triton-ort-trt-cache/{name} on the server; Triton for Jetson has no TensorRT accelerator "
            "(serve an engine there)"
        )
    if request.ensemble:
        served.notes.append(
            f"{name}_preprocess resizes with Pillow: the server's Python needs numpy and pillow "
            "(pip install pillow in the Triton container)"
        )
        size = served_size(request, served)
        for step_name, config, files in ensemble_configs(name, request, served, size):
            models[step_name] = (config, files)
    for model_name in models:
        check_name(model_name)
        check_writable_target(request.repo / model_name, request.force)

    sidecar = sidecar_record(request, served, max_batch)
    written = []
    # Every model directory is staged before any is renamed into place: an error while
    # writing one leaves the repository as it was.
    with contextlib.ExitStack() as stack:
        for model_name, (config, files) in models.items():
            say(f"writing {request.repo / model_name}")
            text = render_config(config)
            staging = stack.enter_context(staged_directory(request.repo / model_name, request.force))
            (staging / "config.pbtxt").write_text(text)
            (staging / VERSION).mkdir()
            files(staging / VERSION)
            if model_name == name:
                (staging / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
            written.append({"name": model_name, "config": text})
    problems = check_repository(request.repo, [m["name"] for m in written])
    if problems:
        raise SegexportError(f"{request.repo}: the written repository fails its check: {problems[0]}")
    return {
        "repository": str(request.repo),
        "models": written,
        "served": served.file_name,
        "max_batch_size": max_batch,
        "notes": served.notes,
        "checked": "config.pbtxt parsed by ModelConfig; I/O, batch range and wiring checked",
    }


def describe_served(request: TritonRequest, manifest: dict[str, Any]) -> Served:
    """Which file the request serves, and its batch range (manifest axes, or the engine profile)."""
    if request.format != "engine":
        if request.engine is not None:
            raise SegexportError("--engine names an engine file; it needs --format engine")
        file_name = str(FORMATS[request.format])
        if file_name not in manifest["files"]:
            raise SegexportError(
                f"{request.artifacts}: no {file_name} in the artifact; make it first "
                f"(segexport quantize --artifacts {request.artifacts} --{request.format.split('-')[1]})"
            )
        low, high, dynamic = _manifest_batch_range(manifest)
        return Served(file_name, manifest, (low, high), dynamic)
    engines = manifest.get("engines", {})
    if not engines:
        raise SegexportError(
            f"{request.artifacts}: --format engine needs a TensorRT engine and the artifact has none; "
            f"build one on the target device (segexport trt --artifacts {request.artifacts}) "
            "or serve an ONNX format"
        )
    if request.engine is None and len(engines) > 1:
        raise SegexportError(
            f"the artifact has several engines ({', '.join(sorted(engines))}); pick one with --engine"
        )
    file_name = request.engine or next(iter(engines))
    if file_name not in engines:
        raise SegexportError(f"{file_name}: not an engine of this artifact ({', '.join(sorted(engines))})")
    record = engines[file_name]
    profile = next(iter(record["profile"].values()))
    built = f"TensorRT {record['tensorrt']} on {record['gpu']['name']}"
    note = (
        f"{file_name} was built version-compatible with {built}: start tritonserver with "
        "--backend-config=tensorrt,version-compatible=true, on TensorRT "
        f"{record['tensorrt']} or later"
        if record.get("version_compatible")
        else f"{file_name} was built with {built}: the server's TensorRT must be exactly "
        f"{record['tensorrt']} (the NGC tritonserver release notes list it) and the GPU the same model"
    )
    return Served(file_name, manifest, (profile["min"][0], profile["max"][0]), True, record, [note])


def _manifest_batch_range(manifest: dict[str, Any]) -> tuple[int, int, bool]:
    first = manifest["inputs"][0]["shape"][0]
    if isinstance(first, int):
        return first, first, False
    low, high = manifest["dynamic_axes"][first]
    return int(low), int(high), True


def default_name(manifest: dict[str, Any], format_name: str, file_name: str) -> str:
    """`segformer-b0-onnx-fp16`, `segformer-b0-plan-fp16`: formats of one artifact don't collide."""
    model = manifest["model"]["name"]
    if format_name == "engine":
        return f"{model}-plan-{file_name.split('.')[1]}"
    return f"{model}-{format_name}"


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise SegexportError(
            f"model name {name!r} would not work as a Triton model: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit, at most 128 characters"
        )


def choose_max_batch(request: TritonRequest, served: Served) -> int:
    """`max_batch_size`: the request's, else the range's top; 0 (Triton doesn't batch) for a fixed batch."""
    low, high = served.batch_range
    what = "the engine's profile" if served.engine else "the artifact's range"
    if not served.batch_dynamic:
        if request.max_batch not in (None, 0):
            raise SegexportError(
                f"--max-batch {request.max_batch}: {served.file_name} has a fixed batch of {low}, "
                "so Triton can't batch it (use --max-batch 0, or re-export with --max-batch)"
            )
        return 0
    max_batch = high if request.max_batch is None else request.max_batch
    if max_batch < 0:
        raise SegexportError(f"--max-batch {max_batch}: must be 0 (no batching) or more")
    if max_batch > high:
        raise SegexportError(
            f"--max-batch {max_batch} is beyond {what} (batch {low}..{high}); use at most {high} "
            "or re-export/rebuild with a larger --max-batch"
        )
    if max_batch > 0 and low > 1:
        raise SegexportError(
            f"{what} starts at batch {low}, but Triton sends any batch from 1 to max_batch_size; "
            "re-export with a batch range that starts at 1, or use --max-batch 0"
        )
    return max_batch


def check_options(request: TritonRequest, served: Served, max_batch: int) -> None:
    """Option combinations Triton would reject or that would serve something else than asked."""
    if request.kind not in ("gpu", "cpu"):
        raise SegexportError(f"--kind {request.kind!r}: choose gpu or cpu")
    if request.instances < 1:
        raise SegexportError(f"--instances {request.instances}: at least 1")
    if served.engine is not None and request.kind == "cpu":
        raise SegexportError("a TensorRT engine runs on a GPU only; use --kind gpu or an ONNX format")
    batching = request.dynamic_batching or request.preferred_batch or request.max_queue_delay_us is not None
    if batching and max_batch == 0:
        raise SegexportError("dynamic batching needs --max-batch of 1 or more (Triton batches up to it)")
    for size in request.preferred_batch:
        if not 1 <= size <= max_batch:
            raise SegexportError(f"--preferred-batch {size}: must be between 1 and --max-batch {max_batch}")
    if request.max_queue_delay_us is not None and request.max_queue_delay_us < 0:
        raise SegexportError(f"--max-queue-delay-us {request.max_queue_delay_us}: must be 0 or more")
    if request.cuda_graphs and served.engine is None:
        raise SegexportError(
            "--cuda-graphs is a TensorRT-backend setting: it needs --format engine "
            "(for ONNX, the TensorRT accelerator has its own trt_cuda_graph_enable)"
        )
    if request.ort_trt is not None:
        _check_ort_trt(request)


def _check_ort_trt(request: TritonRequest) -> None:
    if request.ort_trt not in ORT_TRT_PRECISIONS:
        raise SegexportError(f"--ort-trt {request.ort_trt!r}: choose {' or '.join(ORT_TRT_PRECISIONS)}")
    if request.format == "engine":
        raise SegexportError(
            "--ort-trt configures ONNX Runtime's TensorRT accelerator; an engine is served by TensorRT"
        )
    if request.kind == "cpu":
        raise SegexportError("--ort-trt is a GPU accelerator; it needs --kind gpu")
    if request.format == "onnx-int8" and request.ort_trt != "int8":
        raise SegexportError(
            "model.int8.onnx is a Q/DQ graph: TensorRT builds it only with the INT8 switch (--ort-trt int8)"
        )
    if request.format != "onnx-int8" and request.ort_trt == "int8":
        raise SegexportError(
            "--ort-trt int8 without Q/DQ nodes would need a calibration table segexport does not make; "
            "serve --format onnx-int8 (calibrated Q/DQ) with --ort-trt int8"
        )


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
        low, high = (profile["min"][2], profile["min"][3]), (profile["max"][2], profile["max"][3])
        what = "the engine's profile"
    else:
        axes = manifest["dynamic_axes"]
        ranges = [axes[dim] if isinstance(dim, str) else (dim, dim) for dim in shape[2:]]
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
    if dtype not in _TRITON_TYPES:
        raise SegexportError(f"tensor {entry['name']!r} of type {dtype} has no Triton data type here")
    return {
        "name": entry["name"],
        "data_type": _TRITON_TYPES[dtype],
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
    opt_batch = max(request.preferred_batch, default=1)

    def shape(pick: str) -> str:
        dims = []
        for index, dim in enumerate(entry["shape"]):
            if isinstance(dim, int):
                dims.append(dim)
            elif index == 0:
                dims.append({"min": 1, "opt": opt_batch, "max": top_batch}[pick])
            elif pick == "opt" and opt_size is not None and index in (2, 3):
                dims.append(opt_size[index - 2])
            elif pick == "opt":
                dims.append(_export_dim(manifest, index))
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


def _export_dim(manifest: dict[str, Any], index: int) -> int:
    return int(str(manifest["export_shape"]).split("x")[index - 1])


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


def _copy_model(source: Path, target: Path, manifest: dict[str, Any], served: Served) -> None:
    shutil.copyfile(source, target)
    if sha256_file(target) != manifest["files"][served.file_name]["sha256"]:
        raise SegexportError(f"{source}: changed while being copied into the repository; try again")


def ensemble_configs(
    name: str, request: TritonRequest, served: Served, size: tuple[int, int]
) -> list[tuple[str, dict[str, Any], Callable[[Path], None]]]:
    """The pre-processing, post-processing and ensemble models around the network `name`.

    Clients send one RGB uint8 image [H, W, 3] of any size per request and get a mask [H, W].
    The pre-processing step resizes every image to the served size, so requests reach the
    network with equal shapes and its dynamic batcher can combine them.
    """
    manifest = served.manifest
    network_input = manifest["inputs"][0]
    network_output = manifest["outputs"][0]
    channels = int(network_output["shape"][1])
    mask_type = _TRITON_TYPES[mask_dtype(channels).name]
    logits_type = _TRITON_TYPES[network_output["dtype"]]
    processing = manifest["preprocessing"]
    settings = {
        "height": size[0],
        "width": size[1],
        "mean": processing["mean"],
        "std": processing["std"],
        "scale": processing["scale"],
        "color_order": processing["color_order"],
        "input_dtype": network_input["dtype"],
    }
    cpu = [{"kind": "KIND_CPU", "count": request.instances}]
    pre_name, post_name, ensemble_name = f"{name}_preprocess", f"{name}_postprocess", f"{name}_ensemble"
    image = {"name": "IMAGE", "data_type": "TYPE_UINT8", "dims": [-1, -1, 3]}
    original = {"name": "ORIGINAL_SIZE", "data_type": "TYPE_INT32", "dims": [2]}
    mask = {"name": "MASK", "data_type": mask_type, "dims": [-1, -1]}
    pre = {
        "name": pre_name,
        "backend": "python",
        "max_batch_size": 0,
        "input": [image],
        "output": [
            {
                "name": "NETWORK_INPUT",
                "data_type": _TRITON_TYPES[network_input["dtype"]],
                "dims": [1, 3, *size],
            },
            original,
        ],
        "instance_group": cpu,
        "parameters": {key: {"string_value": json.dumps(value)} for key, value in settings.items()},
    }
    post = {
        "name": post_name,
        "backend": "python",
        "max_batch_size": 0,
        "input": [
            {"name": "NETWORK_OUTPUT", "data_type": logits_type, "dims": [1, channels, -1, -1]},
            original,
        ],
        "output": [mask],
        "instance_group": cpu,
    }
    ensemble = {
        "name": ensemble_name,
        "platform": "ensemble",
        "max_batch_size": 0,
        "input": [image],
        "output": [mask],
        "ensemble_scheduling": {
            "step": [
                {
                    "model_name": pre_name,
                    "model_version": -1,
                    "input_map": {"IMAGE": "IMAGE"},
                    "output_map": {"NETWORK_INPUT": "network_input", "ORIGINAL_SIZE": "original_size"},
                },
                {
                    "model_name": name,
                    "model_version": -1,
                    "input_map": {network_input["name"]: "network_input"},
                    "output_map": {network_output["name"]: "network_output"},
                },
                {
                    "model_name": post_name,
                    "model_version": -1,
                    "input_map": {"NETWORK_OUTPUT": "network_output", "ORIGINAL_SIZE": "original_size"},
                    "output_map": {"MASK": "MASK"},
                },
            ]
        },
    }
    return [
        (pre_name, pre, lambda version: _python_model(version, "preprocess.py")),
        (post_name, post, lambda version: _python_model(version, "postprocess.py")),
        (ensemble_name, ensemble, lambda _version: None),  # Triton wants the empty version directory
    ]


def _python_model(version: Path, source: str) -> None:
    package = Path(__file__).resolve().parents[1]
    shutil.copyfile(package / "triton_models" / source, version / MODEL_FILES["python"])
    vendor_runtime(version)


def vendor_runtime(directory: Path) -> None:
    """Copy the runtime's pre/post-processing into `directory/segexport/`, unchanged.

    Triton's Python-backend stub runs its own interpreter (the container's, or an
    EXECUTION_ENV_PATH environment) where segexport is usually not installed; the model.py
    files put this copy first on sys.path. The copy imports numpy, Pillow (the resize) and
    segexport.errors only; the package `__init__`s are left empty so nothing else is pulled in.
    """
    segexport_dir = Path(__file__).resolve().parents[2]
    for relative in _VENDORED:
        target = directory / "segexport" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(segexport_dir / relative, target)
    for package in (directory / "segexport", directory / "segexport" / "runtime"):
        (package / "__init__.py").write_text('"""Copied by segexport triton for the Python backend."""\n')


def sidecar_record(request: TritonRequest, served: Served, max_batch: int) -> dict[str, Any]:
    """What the check needs beyond the config (the range or profile, the source), beside it.

    Triton ignores files in a model directory other than config.pbtxt and version directories.
    """
    manifest = served.manifest
    return {
        "artifact": str(request.artifacts.resolve()),
        "file": served.file_name,
        "sha256": manifest["files"][served.file_name]["sha256"],
        "format": request.format,
        "model": manifest["model"]["name"],
        "batch_range": list(served.batch_range),
        "max_batch_size": max_batch,
        "inputs": manifest["inputs"],
        "outputs": manifest["outputs"],
        "engine": served.engine,
        "notes": served.notes,
    }


# ---------------------------------------------------------------------------------------------
# The offline check


def check_repository(repo: Path, names: Iterable[str] | None = None) -> list[str]:
    """Problems with the model directories `names` (default: all) of a repository; [] when none.

    Each config.pbtxt must parse as a `ModelConfig` and agree with what it serves: the ONNX
    file's I/O (read by ONNX Runtime), the engine's build record, the ensemble's composing models.
    """
    if names is None:
        names = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
    configs: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for name in names:
        path = repo / name / "config.pbtxt"
        try:
            configs[name] = parse_config(path.read_text())
        except SegexportError:
            raise
        except Exception as error:  # text_format.ParseError, OSError
            problems.append(f"{path}: {first_line(error)}")
    for name, config in configs.items():
        problems += [f"{repo / name}: {problem}" for problem in check_model(repo, name, config)]
    return problems


def check_model(repo: Path, name: str, config: dict[str, Any]) -> list[str]:
    if config.get("name") != name:
        return [f"config name {config.get('name')!r} differs from the directory name"]
    if config.get("platform") == "ensemble":
        return check_ensemble(repo, config)
    kind = config.get("backend") or config.get("platform", "")
    model_file = repo / name / VERSION / config.get("default_model_filename", MODEL_FILES.get(kind, "model"))
    if not model_file.is_file():
        return [f"no {model_file.relative_to(repo / name)}"]
    if kind == "python":
        return []
    if not (repo / name / SIDECAR).is_file():
        return [f"no {SIDECAR}: not written by segexport triton, so not checked"]
    sidecar = json.loads((repo / name / SIDECAR).read_text())
    problems = check_batch(config, sidecar)
    if kind == "onnxruntime":
        problems += check_against_onnx(config, model_file)
        problems += check_accelerators(config, sidecar)
    elif kind == "tensorrt_plan":
        problems += check_against_record(config, sidecar)
    else:
        problems.append(f"backend/platform {kind!r} is not one segexport writes")
    return problems


def check_batch(config: dict[str, Any], sidecar: dict[str, Any]) -> list[str]:
    low, high = sidecar["batch_range"]
    max_batch = int(config.get("max_batch_size", 0))
    if max_batch > high or (max_batch > 0 and low > 1):
        source = "the engine's profile" if sidecar["engine"] else "the artifact's range"
        return [f"max_batch_size {max_batch} does not fit {source} (batch {low}..{high})"]
    return []


def _expected_dims(config: dict[str, Any], tensor: dict[str, Any]) -> list[int]:
    """The full shape a config tensor stands for, the batch axis as -1 when Triton batches."""
    dims = [int(d) for d in tensor.get("dims", [])]
    return [-1, *dims] if int(config.get("max_batch_size", 0)) > 0 else dims


def _compare_io(
    config: dict[str, Any], actual: dict[str, dict[str, tuple[str, list[int]]]], what: str
) -> list[str]:
    """Names, types and dims of the config's inputs/outputs against the model's own."""
    problems = []
    for section in ("input", "output"):
        declared = {t["name"]: t for t in config.get(section, [])}
        if set(declared) != set(actual[section]):
            problems.append(f"{section}s {sorted(declared)} differ from {what}'s {sorted(actual[section])}")
            continue
        for tensor_name, tensor in declared.items():
            data_type, dims = actual[section][tensor_name]
            if tensor.get("data_type") != data_type:
                problems.append(
                    f"{tensor_name}: data_type {tensor.get('data_type')} but {what} has {data_type}"
                )
            expected = _expected_dims(config, tensor)
            if len(expected) != len(dims) or any(
                (a >= 0 or e >= 0) and a != e for e, a in zip(expected, dims, strict=False)
            ):
                problems.append(f"{tensor_name}: dims {expected} (batch included) but {what} has {dims}")
    return problems


def check_against_onnx(config: dict[str, Any], model_file: Path) -> list[str]:
    """The config against the ONNX file itself, as ONNX Runtime reads it."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])

    def described(nodes: list[Any]) -> dict[str, tuple[str, list[int]]]:
        return {
            n.name: (_ORT_TYPES.get(n.type, n.type), [d if isinstance(d, int) else -1 for d in n.shape])
            for n in nodes
        }

    actual = {"input": described(session.get_inputs()), "output": described(session.get_outputs())}
    return _compare_io(config, actual, model_file.name)


def check_against_record(config: dict[str, Any], sidecar: dict[str, Any]) -> list[str]:
    """A plan's config against the engine's build record (the engine itself needs TensorRT to read)."""
    profile = sidecar["engine"]["profile"]
    actual: dict[str, dict[str, tuple[str, list[int]]]] = {"input": {}, "output": {}}
    for section, entries in (("input", sidecar["inputs"]), ("output", sidecar["outputs"])):
        for entry in entries:
            dims = [d if isinstance(d, int) else -1 for d in entry["shape"]]
            actual[section][entry["name"]] = (_TRITON_TYPES[entry["dtype"]], dims)
    problems = _compare_io(config, actual, "the engine")
    if set(profile) != set(actual["input"]):
        problems.append(
            f"the engine's profile covers {sorted(profile)}, the config {sorted(actual['input'])}"
        )
    return problems


def check_accelerators(config: dict[str, Any], sidecar: dict[str, Any]) -> list[str]:
    """Accelerator names and keys the ONNX Runtime backend accepts; the INT8 rule for Q/DQ graphs."""
    problems = []
    accelerators = config.get("optimization", {}).get("execution_accelerators", {})
    for accelerator in accelerators.get("gpu_execution_accelerator", []):
        if accelerator.get("name") != "tensorrt":
            problems.append(f"accelerator {accelerator.get('name')!r} is not one segexport configures")
            continue
        parameters = accelerator.get("parameters", {})
        unknown = sorted(set(parameters) - ORT_TENSORRT_KEYS)
        if unknown:
            problems.append(f"the ONNX Runtime backend rejects TensorRT accelerator keys {unknown}")
        mode = parameters.get("precision_mode", "FP32")
        if mode not in ORT_PRECISION_MODES:
            problems.append(f"precision_mode {mode!r} is not one of {sorted(ORT_PRECISION_MODES)}")
        if sidecar["format"] == "onnx-int8":
            if mode != "INT8":
                problems.append("a Q/DQ INT8 graph needs precision_mode INT8 for TensorRT to build it")
            if "int8_calibration_table_name" in parameters:
                problems.append("a Q/DQ INT8 graph must not get a calibration table (session creation fails)")
    if accelerators.get("cpu_execution_accelerator"):
        problems.append("cpu_execution_accelerator is not one segexport configures")
    return problems


def check_ensemble(repo: Path, config: dict[str, Any]) -> list[str]:
    """Every step's model exists and has the mapped tensors; every ensemble tensor is produced
    exactly once (an ensemble input, or one step's output) and consumed (a step or the output)."""
    problems = []
    producers: dict[str, list[str]] = {t["name"]: ["ensemble input"] for t in config.get("input", [])}
    types: dict[str, str] = {t["name"]: t["data_type"] for t in config.get("input", [])}
    consumers: dict[str, list[str]] = {t["name"]: ["ensemble output"] for t in config.get("output", [])}
    consumer_types: list[tuple[str, str, str]] = [
        (t["name"], t["data_type"], "ensemble output") for t in config.get("output", [])
    ]
    for step in config.get("ensemble_scheduling", {}).get("step", []):
        model = step["model_name"]
        path = repo / model / "config.pbtxt"
        if not path.is_file():
            problems.append(f"step model {model!r} is not in the repository")
            continue
        step_config = parse_config(path.read_text())
        inputs = {t["name"]: t["data_type"] for t in step_config.get("input", [])}
        outputs = {t["name"]: t["data_type"] for t in step_config.get("output", [])}
        for model_input, tensor in step.get("input_map", {}).items():
            if model_input not in inputs:
                problems.append(f"step {model!r} has no input {model_input!r}")
                continue
            consumers.setdefault(tensor, []).append(model)
            consumer_types.append((tensor, inputs[model_input], model))
        missing = set(inputs) - set(step.get("input_map", {}))
        if missing:
            problems.append(f"step {model!r} gets no tensor for inputs {sorted(missing)}")
        for model_output, tensor in step.get("output_map", {}).items():
            if model_output not in outputs:
                problems.append(f"step {model!r} has no output {model_output!r}")
                continue
            producers.setdefault(tensor, []).append(model)
            types[tensor] = outputs[model_output]
    for tensor, made_by in producers.items():
        if len(made_by) > 1:
            problems.append(
                f"ensemble tensor {tensor!r} is produced {len(made_by)} times ({', '.join(made_by)})"
            )
        if tensor not in consumers:
            problems.append(f"ensemble tensor {tensor!r} is produced but never consumed")
    for tensor, data_type, user in consumer_types:
        if tensor not in producers:
            problems.append(f"ensemble tensor {tensor!r} is consumed by {user} but never produced")
        elif types.get(tensor) != data_type:
            problems.append(f"ensemble tensor {tensor!r} is {types.get(tensor)} but {user} takes {data_type}")
    return problems
