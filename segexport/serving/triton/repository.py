"""`segexport triton`: write a model repository from an artifact (the network, optionally the
pre-/post-processing ensemble around it), staged so that a failure leaves the repository as
it was, then checked.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segexport.errors import SegexportError
from segexport.runtime.artifacts import read_manifest, sha256_file, vouched_path
from segexport.runtime.geometry import mask_dtype
from segexport.runtime.outputs import check_output, staged_output
from segexport.runtime.preprocessing import input_format, input_shape
from segexport.serving.triton.check import check_repository
from segexport.serving.triton.config import (
    FORMATS,
    MODEL_FILES,
    ORT_TRT_PRECISIONS,
    SIDECAR,
    TRITON_TYPES,
    VERSION,
    Served,
    TritonRequest,
    model_config_module,
    network_config,
    network_file,
    render_config,
    served_size,
)

# Model names become directory names and URL path segments (/v2/models/NAME); a leading dot
# hides the directory and a slash or space breaks one or the other.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# What the Python-backend steps need of segexport, copied beside their model.py (see vendor_runtime).
_VENDORED = ("errors.py", "runtime/preprocessing.py", "runtime/geometry.py")

Progress = Callable[[str], None]


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
        check_output(
            request.repo / model_name,
            request.force,
            directory=True,
            reads=[request.artifacts],
            option="--name",
        )

    sidecar = sidecar_record(request, served, max_batch)
    written = []
    # Every model directory is staged before any is renamed into place: an error while
    # writing one leaves the repository as it was.
    with contextlib.ExitStack() as stack:
        for model_name, (config, files) in models.items():
            say(f"writing {request.repo / model_name}")
            text = render_config(config)
            staging = stack.enter_context(
                staged_output(
                    request.repo / model_name, request.force, "triton", [request.artifacts], "--name"
                )
            )
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
    mask_type = TRITON_TYPES[mask_dtype(channels).name]
    logits_type = TRITON_TYPES[network_output["dtype"]]
    processing = manifest["preprocessing"]
    settings = {
        "height": size[0],
        "width": size[1],
        "mean": processing["mean"],
        "std": processing["std"],
        "scale": processing["scale"],
        "color_order": processing["color_order"],
        "input_dtype": network_input["dtype"],
        "input_format": input_format(processing),
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
                "data_type": TRITON_TYPES[network_input["dtype"]],
                "dims": list(input_shape(manifest["preprocessing"], 1, size)),
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
    package = Path(__file__).resolve().parents[1]  # segexport/serving, beside triton_models/
    shutil.copyfile(package / "triton_models" / source, version / MODEL_FILES["python"])
    vendor_runtime(version)


def vendor_runtime(directory: Path) -> None:
    """Copy the runtime's pre/post-processing into `directory/segexport/`, unchanged.

    Triton's Python-backend stub runs its own interpreter (the container's, or an
    EXECUTION_ENV_PATH environment) where segexport is usually not installed; the model.py
    files put this copy first on sys.path. The copy imports numpy, Pillow (the resize) and
    segexport.errors only; the package `__init__`s are left empty so nothing else is pulled in.
    """
    segexport_dir = Path(__file__).resolve().parents[2]  # this file is segexport/serving/triton/*.py
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
