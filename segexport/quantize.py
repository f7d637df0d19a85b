"""`segexport quantize`: FP16 and INT8 ONNX beside a verified FP32 artifact, checked on real data.

The graph transforms live in `precision`; this module feeds them calibration images
through the runtime's preprocessing, measures each precision against PyTorch FP32 on
the evaluation split (agreement, relative L2, mIoU), keeps the most sensitive layers
in float when INT8 misses the agreement target, and records everything in the manifest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from segexport import cpu_graph, precision, readiness, sensitivity
from segexport.compare import OutputStats, Tolerance
from segexport.data import SYNTHETIC_CLASSES, ImageFolder, SyntheticScenes, evaluation_images
from segexport.errors import SegexportError
from segexport.export import MASK_OUTPUT
from segexport.prerequisites import artifact_directory
from segexport.reference import FOREIGN_SOURCES, data_size, reference_runner, source_kind, spec_for
from segexport.runtime import OnnxRuntimeRunner, Runner, preprocess_for, resize
from segexport.runtime.artifacts import (
    MANIFEST,
    atomic_write,
    begin_stage,
    check_writable_directory,
    read_manifest,
    record_files,
    sha256_file,
    vouched_bytes,
    write_json_atomic,
)
from segexport.runtime.cpu_isa import CPU_ISAS, ISA_MEANING, cpu_flags, detect_cpu_isa, resolve_cpu_isa
from segexport.runtime.files import FP32_ONNX, emulates_tensorrt_qdq, onnx_file_name
from segexport.shapes import InputShape

Progress = Callable[[str], None]
RECOMMENDED_CALIBRATION_IMAGES = 32
CALIBRATION_FILE = "calib.json"
METHODS = ("minmax", "entropy", "percentile")
# Each written file, by the request flag that asks for it.
_OUTPUTS = {onnx_file_name(variant): variant.replace("-", "_") for variant in ("fp16", "int8", "int8-cpu")}


@dataclass
class QuantizeRequest:
    artifacts: Path | None = None
    model: str | None = None
    weights: str | None = None
    fp16: bool = True
    int8: bool = True
    int8_cpu: bool = False
    calib: str = "synthetic"
    calib_size: int = 64
    method: str = "percentile"
    percentile: float = 99.99
    calib_cache: Path | None = None
    min_agreement: float = 0.99
    eval_images: int = 16
    force: bool = False
    threads: int | None = None
    cpu_isa: str = "auto"


@dataclass
class EvalSet:
    """Evaluation feeds (preprocessed images, or RoI features), ground truth (if any) and
    PyTorch's answers; `label_output` when the output is a per-class score map."""

    feeds: list[dict[str, np.ndarray]]
    labels: list[np.ndarray] | None
    reference: list[np.ndarray]
    class_names: tuple[str, ...]
    label_output: bool = True


def calibration_batches(
    source: str, count: int, size: tuple[int, int], manifest: dict[str, Any], progress: Progress
) -> list[dict[str, np.ndarray]]:
    """Calibration inputs, read and preprocessed exactly as the runtime would."""
    prep = manifest["preprocessing"]
    if count < 1:
        raise SegexportError(f"--calib-size must be >= 1, got {count}")
    if source == "synthetic":
        images = [image for image, _ in SyntheticScenes("calibration", count, size)]
    else:
        folder = ImageFolder.from_dir(Path(source))
        images = [resize(folder[i], size) for i in range(min(count, len(folder)))]
    if len(images) < RECOMMENDED_CALIBRATION_IMAGES:
        warnings.warn(
            f"only {len(images)} calibration images; {RECOMMENDED_CALIBRATION_IMAGES}+ are recommended",
            stacklevel=2,
        )
        progress(
            f"warning: only {len(images)} calibration images ({RECOMMENDED_CALIBRATION_IMAGES}+ recommended)"
        )
    return [{"image": preprocess_for(prep, image)} for image in images]


def evaluation_set(
    manifest: dict[str, Any],
    count: int,
    threads: int | None,
    data: str | None = None,
    directory: Path | None = None,
) -> EvalSet:
    """PyTorch's answers on the evaluation images: `data` (a labelled folder, or synthetic),
    by default the synthetic eval split when the model was trained on it, else random inputs."""
    spec = spec_for(manifest)
    class_names = tuple(manifest["model"]["class_names"])
    reference = reference_runner(manifest, directory, threads, onnx_fallback=True)
    if spec.input_kind != "image":  # RoI heads: seeded random RoI features, 4 RoIs each
        seeded = torch.Generator().manual_seed(0)
        feeds = [
            {k: v.numpy() for k, v in spec.example_inputs(InputShape(4), len(class_names), seeded).items()}
            for _ in range(count)
        ]
        outputs = [reference.infer(feed)[spec.output_names[0]] for feed in feeds]
        return EvalSet(feeds, None, outputs, class_names, spec.output_names[0] in spec.logits_outputs)
    if data is None:
        data = "synthetic" if class_names == SYNTHETIC_CLASSES else "random"
    images = evaluation_images(data, class_names, count, data_size(manifest), need_labels=data != "random")
    batches = list(images.batches(1, manifest["preprocessing"]))
    inputs = [{"image": batch.inputs} for batch in batches]
    labels = [batch.truth for batch in batches if batch.truth is not None]
    outputs = [reference.infer(feed)[spec.output_names[0]] for feed in inputs]
    return EvalSet(inputs, labels if images.labelled else None, outputs, class_names)


def measure(
    path: Path | Runner, evalset: EvalSet, threads: int | None, tolerance: Tolerance | None = None
) -> dict[str, Any]:
    """Agreement, relative L2 and mIoU of an ONNX file (or any runner) against PyTorch FP32;
    with a `tolerance`, also `reasons`: the comparator's verdict on why it misses it."""
    runner = OnnxRuntimeRunner(path, threads=threads) if isinstance(path, Path) else path
    name = runner.output_names[0]
    stats = OutputStats(name, labels=evalset.label_output)
    for index, (feed, expected) in enumerate(zip(evalset.feeds, evalset.reference, strict=True)):
        truth = None if evalset.labels is None else evalset.labels[index]
        actual = runner.infer(feed)[name]
        if name == MASK_OUTPUT:  # `--head mask`: class ids, against PyTorch's argmax
            expected = expected.argmax(axis=1).astype(actual.dtype)
        stats.add(expected, actual, truth)
    figures = stats.result(tolerance or Tolerance(max_rel_l2=math.inf))
    result: dict[str, Any] = {
        "agreement": figures.agreement,
        "rel_l2": figures.rel_l2,
        "nonfinite": figures.nonfinite,
        "images": len(evalset.feeds),
    }
    if evalset.labels is not None:
        result["miou"] = figures.miou
        result["miou_pytorch_fp32"] = figures.miou_reference
    if tolerance is not None:
        result["reasons"] = figures.reasons
    return result


def quantize_artifact(request: QuantizeRequest, progress: Progress | None = None) -> dict[str, Any]:
    """Write model.fp16.onnx / model.int8.onnx / model.int8-cpu.onnx beside model.onnx.

    Returns the new manifest.
    """
    say = progress or (lambda _message: None)
    check_request(request)
    directory = artifact_directory(request.artifacts, request.model, request.weights, say)
    manifest = read_manifest(directory)
    wanted = [name for name, flag in _OUTPUTS.items() if getattr(request, flag)]
    writes = [*wanted, *([CALIBRATION_FILE] if request.int8 or request.int8_cpu else [])]
    begin_stage(directory, manifest, writes, "quantize writes its models there")
    fp32_bytes = vouched_bytes(directory, FP32_ONNX, manifest)
    spec = spec_for(manifest)
    if (
        source_kind(manifest) in FOREIGN_SOURCES
        and (request.int8 or request.int8_cpu)
        and request.calib == "synthetic"
    ):
        raise SegexportError(
            f"{spec.name}: INT8 calibration needs images like the ones the model will see: pass --calib DIR "
            "(a folder of images); segexport's synthetic scenes are only for its demo models"
        )
    if spec.input_kind != "image" and (request.int8 or request.int8_cpu):
        raise SegexportError(
            f"{spec.name}: INT8 needs calibration data for its inputs ({', '.join(spec.input_names)}), "
            "which only a detector's backbone can provide; use --fp16 (checked on random RoI features)"
        )
    for name in wanted:
        if name in manifest["files"]:
            if not request.force:
                raise SegexportError(f"{directory / name} already exists; pass --force to replace it")
        elif os.path.lexists(directory / name):
            say(f"replacing {name}: the manifest does not vouch for it (left by an unfinished run?)")
    fp32 = onnx.load_from_string(fp32_bytes)
    results: dict[str, Any] = manifest.get("precisions", {})
    with tempfile.TemporaryDirectory(prefix="segexport-quantize-") as scratch:
        workdir = Path(scratch)
        fp32_path = workdir / FP32_ONNX  # the vouched bytes, so later reads see what was checked
        fp32_path.write_bytes(fp32_bytes)
        say(f"evaluating PyTorch FP32 on {request.eval_images} held-out images")
        evalset = evaluation_set(manifest, request.eval_images, request.threads, directory=directory)
        results["fp32"] = measure(fp32_path, evalset, request.threads)
        if request.fp16:
            say("converting to FP16 (normalisation and softmax kept in FP32)")
            started = time.perf_counter()
            onnx.save(precision.to_fp16(fp32), str(workdir / onnx_file_name("fp16")))
            results["fp16"] = {
                **measure(workdir / onnx_file_name("fp16"), evalset, request.threads),
                "kept_fp32_ops": list(precision.FP32_OPS),
                "seconds": round(time.perf_counter() - started, 2),
            }
        schemes = (("int8", request.int8), ("int8-cpu", request.int8_cpu))
        int8_names = [name for name, flag in schemes if flag]
        if int8_names:
            calibration = _calibration(request, fp32_path, manifest, workdir, say)
            for name in int8_names:
                results[name] = _int8(name, request, fp32, calibration, evalset, workdir, say)
        # Everything was made in the scratch folder; only now, with all of it verified, do the
        # files land beside the manifest (a failure above leaves the artifact as it was).
        for name in writes:
            atomic_write(directory / name, partial(shutil.copyfile, workdir / name))
    manifest["precisions"] = results
    record_files(directory, manifest, writes)
    manifest["trt_readiness"] = readiness.check_artifacts(directory, "all", manifest)
    for line in readiness.summary_lines(manifest["trt_readiness"]):
        say(line)
    write_json_atomic(directory / MANIFEST, manifest)
    return manifest


def check_request(request: QuantizeRequest) -> None:
    """Refuse bad options before any work (the CLI's ranges say the same)."""
    if not (request.fp16 or request.int8 or request.int8_cpu):
        raise SegexportError("nothing to do: pass --fp16, --int8 or --int8-cpu")
    for value, option in ((request.calib_size, "--calib-size"), (request.eval_images, "--limit")):
        if value < 1:
            raise SegexportError(f"{option} must be >= 1, got {value}")
    if request.threads is not None and request.threads < 1:
        raise SegexportError(f"--threads must be >= 1, got {request.threads}")
    if not 0 < request.percentile <= 100:
        raise SegexportError(f"--percentile must be in (0, 100], got {request.percentile}")
    if not 0 <= request.min_agreement <= 1:
        raise SegexportError(f"--min-agreement must be in [0, 1], got {request.min_agreement}")
    if request.cpu_isa not in ("auto", *CPU_ISAS):
        raise SegexportError(f"--cpu-isa {request.cpu_isa!r}: use auto or one of {', '.join(CPU_ISAS)}")
    if request.method not in METHODS:
        raise SegexportError(f"--method {request.method!r}: use one of {', '.join(METHODS)}")
    if request.calib_cache is not None and not request.calib_cache.is_file():
        check_writable_directory(request.calib_cache.parent, "--calib-cache is created there")


def _calibration(
    request: QuantizeRequest,
    fp32_path: Path,
    manifest: dict[str, Any],
    workdir: Path,
    say: Progress,
) -> precision.Calibration:
    """Activation ranges from the cache, or from the calibration set; saved as calib.json in
    `workdir` (and as the cache when it is new)."""
    graph_sha = sha256_file(fp32_path)
    if request.calib_cache is not None and request.calib_cache.is_file():
        calibration = precision.Calibration.load(request.calib_cache, graph_sha)
        say(f"using calibration cache {request.calib_cache} ({len(calibration.ranges)} tensors)")
    else:
        size = data_size(manifest)
        say(f"calibrating ({request.method}) on {request.calib_size} images from {request.calib}")
        batches = calibration_batches(request.calib, request.calib_size, size, manifest, say)
        calibration = precision.calibrate(
            fp32_path, batches, request.method, graph_sha, workdir, request.percentile
        )
    narrow = calibration.minmax_fallback
    if narrow:
        say(
            f"      {len(narrow)} tensors span too narrow a range for {request.method}'s histogram "
            f"and took their min/max range: {', '.join(narrow[:3])}{', ...' if len(narrow) > 3 else ''} "
            "(manifest: calibration.minmax_fallback)"
        )
    calibration.save(workdir / CALIBRATION_FILE)
    if request.calib_cache is not None and not os.path.lexists(request.calib_cache):
        atomic_write(request.calib_cache, calibration.save)
    return calibration


def _runner(model: onnx.ModelProto, name: str, threads: int | None) -> OnnxRuntimeRunner:
    """TensorRT's graph runs with TensorRT's arithmetic (emulated Q/DQ, the same on every CPU);
    the CPU graph with the fused kernels it will be deployed on."""
    return OnnxRuntimeRunner(
        model.SerializeToString(),
        threads=threads,
        name=name,
        emulate_qdq=emulates_tensorrt_qdq(onnx_file_name(name)),
    )


def _scheme(name: str, cpu_isa: str) -> precision.Int8Scheme:
    return precision.int8_cpu_scheme(cpu_isa) if name == "int8-cpu" else precision.INT8_SCHEMES[name]


def _int8(
    name: str,
    request: QuantizeRequest,
    fp32: onnx.ModelProto,
    calibration: precision.Calibration,
    evalset: EvalSet,
    workdir: Path,
    say: Progress,
) -> dict[str, Any]:
    """One INT8 scheme, with the layers that matter most per unit of cost kept float until the
    agreement target is met; the chosen graph is left in `workdir` as model.<name>.onnx."""
    started = time.perf_counter()
    cpu_isa = resolve_cpu_isa(request.cpu_isa)
    scheme = _scheme(name, cpu_isa)
    say(f"quantizing {name}: {scheme.purpose}")
    if scheme.graph_rewrites:  # the CPU graph's rewrites; every later step sees the rewritten graph
        fp32, ranges = cpu_graph.rewrite(fp32, calibration.ranges, scheme.graph_rewrites)
        calibration = dataclasses.replace(calibration, ranges=ranges)
    plain = precision.to_int8(fp32, calibration, scheme=scheme)
    int8 = plain

    def score(model: onnx.ModelProto) -> float:
        return float(measure(_runner(model, name, request.threads), evalset, request.threads)["agreement"])

    measured = measure(_runner(int8, name, request.threads), evalset, request.threads)
    plain_agreement = measured["agreement"]
    sensitivities: list[sensitivity.LayerSensitivity] = []
    kept: list[str] = []
    if measured["agreement"] < request.min_agreement:
        say(
            f"agreement {measured['agreement']:.4f} < {request.min_agreement}: "
            "measuring each layer's sensitivity"
        )
        sensitivities = _sensitivities(
            request, fp32, plain, plain_agreement, scheme, evalset, workdir, score, say
        )
        candidates = sensitivity.Candidates(fp32, plain, scheme.inputs_only)
        kept, _ = sensitivity.choose_float_layers(
            sensitivities, candidates, score, request.min_agreement, say
        )
        more = [s.node for s in sensitivity.ranked(sensitivities) if s.node not in kept]
        while True:  # the quantizer's graph, checked; more layers while it falls short
            int8 = precision.to_int8(fp32, calibration, keep_float=kept, scheme=scheme)
            measured = measure(_runner(int8, name, request.threads), evalset, request.threads)
            say(f"  {len(kept)} layers kept float: agreement {measured['agreement']:.4f}")
            if measured["agreement"] >= request.min_agreement or not more:
                break
            kept.append(more.pop(0))
    if scheme.qdq_rewrites:  # on the chosen graph (the fallback reads the plain Q/DQ form), then re-measured
        int8 = cpu_graph.rewrite_qdq(int8, scheme.qdq_rewrites)
        measured = measure(_runner(int8, name, request.threads), evalset, request.threads)
    onnx.save(int8, str(workdir / onnx_file_name(name)))
    chosen = {s.node: s for s in sensitivities if s.node in kept}
    total_cost = sum(s.cost for s in sensitivities) or 1
    result = {
        **measured,
        "scheme": {
            "purpose": scheme.purpose,
            "unsigned_activations": scheme.unsigned_activations,
            "quantized_ops": list(scheme.ops),
            "reduce_range": scheme.reduce_range,
            "graph_rewrites": list(scheme.graph_rewrites),
            "qdq_rewrites": list(scheme.qdq_rewrites),
        },
        "calibration": {
            "source": request.calib,
            "images": calibration.images,
            "method": calibration.method,
            "percentile": calibration.percentile,
            "minmax_fallback": list(calibration.minmax_fallback),
            "cache": CALIBRATION_FILE,
        },
        "kept_float": sorted(
            {
                *precision.output_producers(fp32),
                *kept,
                *(precision.int8_incapable_convs(fp32) if scheme.inputs_only else []),
            }
        ),
        "agreement_without_fallback": plain_agreement,
        "sensitivity_fallback": [chosen[node].to_dict() for node in kept],
        "fallback_cost_share": round(sum(chosen[n].cost for n in kept) / total_cost, 4),
        "layers_measured": len(sensitivities),
        "layers_that_help": len(sensitivity.ranked(sensitivities)),
        "qdq_pairs": precision.qdq_pair_count(int8),
        "seconds": round(time.perf_counter() - started, 2),
    }
    if name == "int8-cpu":
        result["cpu_isa"] = {
            "target": cpu_isa,
            "requested": request.cpu_isa,
            "meaning": ISA_MEANING[cpu_isa],
            "detected_here": detect_cpu_isa(),
            "cpu_flags_here": cpu_flags(),
        }
    return result


def _sensitivities(
    request: QuantizeRequest,
    fp32: onnx.ModelProto,
    plain: onnx.ModelProto,
    baseline: float,
    scheme: precision.Int8Scheme,
    evalset: EvalSet,
    workdir: Path,
    score: sensitivity.Score,
    say: Progress,
) -> list[sensitivity.LayerSensitivity]:
    """Per-layer measures, from the sensitivity cache beside --calib-cache when it has them."""
    excluded = set(precision.output_producers(fp32))
    if scheme.inputs_only:
        excluded |= set(precision.int8_incapable_convs(fp32))
    layers = [n.name for n in fp32.graph.node if n.op_type in scheme.compute_ops and n.name not in excluded]
    cache = None if request.calib_cache is None else request.calib_cache.with_suffix(".sensitivity.json")
    key = sensitivity.cache_key(plain, evalset.reference)
    cached = sensitivity.load_cached(cache, key)
    if cached is not None:
        say(f"  using {len(cached)} layer sensitivities cached in {cache}")
        return cached
    costs = sensitivity.layer_costs(fp32, layers, evalset.feeds[0], workdir)
    candidates = sensitivity.Candidates(fp32, plain, scheme.inputs_only)
    results = sensitivity.analyse(candidates, layers, costs, score, baseline, say)
    if cache is not None:
        document = sensitivity.cache_document(cache, key, results)
        atomic_write(cache, lambda path: path.write_text(json.dumps(document, indent=1) + "\n"))
    return results
