"""The offline check of a Triton model repository: each config.pbtxt re-read through
`ModelConfig` and held against what it serves (the ONNX file's I/O, the engine's build record,
the accelerator keys the ONNX Runtime backend accepts) and the ensemble's wiring.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from segexport.errors import SegexportError, first_line
from segexport.serving.triton.config import (
    MODEL_FILES,
    ORT_PRECISION_MODES,
    ORT_TENSORRT_KEYS,
    SIDECAR,
    TRITON_TYPES,
    VERSION,
    parse_config,
)

# ONNX Runtime's type strings for the types in config.TRITON_TYPES, for checking configs against a model file.
_ORT_TYPES = {f"tensor({ort})": triton for ort, triton in [
    ("bool", "TYPE_BOOL"), ("uint8", "TYPE_UINT8"), ("uint16", "TYPE_UINT16"), ("int8", "TYPE_INT8"),
    ("int16", "TYPE_INT16"), ("int32", "TYPE_INT32"), ("int64", "TYPE_INT64"), ("float16", "TYPE_FP16"),
    ("float", "TYPE_FP32"), ("double", "TYPE_FP64"),
]}  # fmt: skip


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
            actual[section][entry["name"]] = (TRITON_TYPES[entry["dtype"]], dims)
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
