"""The TensorRT stage: a strongly typed engine from the precision ONNX, its profile from the manifest.

Precision lives in the ONNX (FP16 tensors, Q/DQ nodes), so one strongly typed build
path serves TensorRT 10.x (Jetson) and 11.x alike; the weakly typed FP16 flag is kept
only as a 10.x opt-in. Everything that needs no TensorRT (option checks, profile
derivation, preparing the ONNX) is plain Python and tested here; the few TensorRT calls
are checked against each release's bindings by `make typecheck-trt`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, SupportsInt

from segexport.engine_check import (
    ENGINE_TOLERANCE,
    EngineCheck,
    check_engine,
    delivered_precisions,
    profile_check_shapes,
    refuse_contradiction,
)
from segexport.errors import SegexportError, UnavailableError, VerificationError
from segexport.runtime.artifacts import (
    atomic_write,
    begin_stage,
    check_vouched_files,
    read_manifest,
    record_files,
    vouched_path,
)
from segexport.runtime.cuda import Cuda, import_cudart
from segexport.runtime.engine_records import (
    GpuIdentity,
    current_gpu,
    require_tensorrt,
    tensorrt_unavailable_reason,
)
from segexport.runtime.files import (
    ENGINE_PRECISIONS,
    FP32_ONNX,
    REFERENCE_FILE,
    engine_file_name,
    onnx_file_name,
)
from segexport.runtime.judge import NOT_RERUN
from segexport.runtime.recorded import RecordedReference, read_reference

Progress = Callable[[str], None]

PRECISIONS = ENGINE_PRECISIONS
HARDWARE_COMPAT = ("same", "ampere+")
# The timing cache kept beside the artifact by default: rebuilds on the device reuse it.
TIMING_CACHE = "timing.cache"
# The default workspace limit, as a share of the device's free memory: on an 8 GB Orin the
# builder shares memory with the OS and the CPU, and an unlimited workspace is OOM-killed.
WORKSPACE_SHARE = 0.5
__all__ = ["ENGINE_TOLERANCE", "EngineCheck", "profile_check_shapes"]  # re-exported from engine_check


@dataclass(frozen=True)
class BuildOptions:
    """What `segexport trt` takes besides the artifact; None means TensorRT's default."""

    precision: str = "fp16"
    min_size: tuple[int, int] | None = None
    opt_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None
    max_batch: int | None = None
    workspace_gib: float | None = None
    timing_cache: Path | None = None
    opt_level: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    version_compatible: bool = False
    hardware_compat: str = "same"
    legacy_fp16_flag: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timing_cache"] = str(self.timing_cache) if self.timing_cache else None
        return data


def check_options(options: BuildOptions, tensorrt_version: str | None) -> None:
    """Refuse impossible combinations; the version-specific ones once the version is known."""
    if options.precision not in PRECISIONS:
        raise SegexportError(f"precision {options.precision!r} is not one of {', '.join(PRECISIONS)}")
    if options.opt_level is not None and not 0 <= options.opt_level <= 5:
        raise SegexportError(f"--opt-level must be 0..5, got {options.opt_level}")
    if options.workspace_gib is not None and options.workspace_gib <= 0:
        raise SegexportError(f"--workspace must be > 0 GiB, got {options.workspace_gib}")
    if options.max_batch is not None and options.max_batch < 1:
        raise SegexportError(f"--max-batch must be >= 1, got {options.max_batch}")
    if options.hardware_compat not in HARDWARE_COMPAT:
        raise SegexportError(f"--hardware-compat must be one of {', '.join(HARDWARE_COMPAT)}")
    if options.gpu_fallback and options.dla_core is None:
        raise SegexportError("--gpu-fallback only applies with --dla-core N")
    if options.dla_core is not None:
        if options.dla_core < 0:
            raise SegexportError(f"--dla-core must be >= 0, got {options.dla_core}")
        if options.hardware_compat != "same" or options.version_compatible:
            raise SegexportError(
                "DLA engines are tied to their device: --dla-core excludes --hardware-compat ampere+ "
                "and --version-compatible"
            )
    if options.legacy_fp16_flag and options.precision != "fp16":
        raise SegexportError("--legacy-fp16-flag builds FP16 from the FP32 ONNX; it needs --precision fp16")
    if tensorrt_version is None:
        return
    major = int(tensorrt_version.split(".")[0])
    if options.legacy_fp16_flag and major >= 11:
        raise SegexportError(
            f"--legacy-fp16-flag needs TensorRT 10.x; TensorRT {tensorrt_version} removed BuilderFlag.FP16 "
            "(networks are strongly typed): drop the flag to build the FP16 ONNX"
        )
    if options.dla_core is not None and major >= 11:
        raise SegexportError(
            f"--dla-core needs TensorRT 10.x: DLA is on Jetson, which TensorRT {tensorrt_version} "
            "does not support"
        )


Profile = dict[str, dict[str, list[int]]]


def derive_profile(manifest: dict[str, Any], options: BuildOptions) -> Profile:
    """min/opt/max shape per input from the ranges the ONNX was verified for.

    Overrides must stay inside those ranges and keep the model's size rule: the
    engine must never promise a shape that the ONNX was not checked at.
    """
    axes = manifest["dynamic_axes"]
    divisible = int(manifest.get("size_rule", {}).get("divisible_by", 1))
    export_shape = [int(v) for v in manifest["export_shape"].split("x")]
    batch_axis = next(iter(axes))
    batch_low, batch_high = axes[batch_axis]
    max_batch = options.max_batch or batch_high
    if not batch_low <= max_batch <= batch_high:
        raise SegexportError(
            f"--max-batch {max_batch} is outside the batch range the ONNX was verified for "
            f"({batch_low}..{batch_high}); re-export with --max-batch"
        )
    ranges: dict[str, tuple[int, int, int]] = {
        batch_axis: (batch_low, min(export_shape[0], max_batch), max_batch)
    }
    if "height" in axes:
        default_opt = (export_shape[1], export_shape[2])
        for index, axis in enumerate(("height", "width")):
            low, high = axes[axis]
            chosen = [
                size[index] if size else fallback
                for size, fallback in (
                    (options.min_size, low),
                    (options.opt_size, default_opt[index]),
                    (options.max_size, high),
                )
            ]
            for label, value in zip(("--min-size", "--opt-size", "--max-size"), chosen, strict=True):
                if not low <= value <= high:
                    raise SegexportError(
                        f"{label}: {axis} {value} is outside the range the ONNX was verified for "
                        f"({low}..{high}); re-export with --min-size/--max-size"
                    )
                if value % divisible:
                    raise SegexportError(f"{label}: {axis} {value} is not a multiple of {divisible}")
            if not chosen[0] <= chosen[1] <= chosen[2]:
                raise SegexportError(
                    f"{axis}: need min <= opt <= max, got {chosen[0]}, {chosen[1]}, {chosen[2]}"
                )
            ranges[axis] = (chosen[0], chosen[1], chosen[2])
    profile: Profile = {}
    for tensor in manifest["inputs"]:
        dims = tensor["shape"]
        profile[tensor["name"]] = {
            key: [ranges[d][position] if isinstance(d, str) else int(d) for d in dims]
            for position, key in enumerate(("min", "opt", "max"))
        }
        unknown = [d for d in dims if isinstance(d, str) and d not in ranges]
        if unknown:
            raise SegexportError(f"input {tensor['name']}: no range for axis {', '.join(unknown)}")
    return profile


@dataclass
class BuildRequest:
    options: BuildOptions = field(default_factory=BuildOptions)
    artifacts: Path | None = None
    model: str | None = None
    weights: str | None = None
    force: bool = False
    threads: int | None = None
    ignore_readiness: bool = False
    calib: str | None = None  # calibration images for the INT8 stage run first [synthetic]


def _default_weights(model: str) -> str | None:
    """The shipped demo checkpoint when there is one: FP16/INT8 must be judged on trained weights."""
    from segexport.weights import has_demo_checkpoint
    from segexport.zoo import get_spec

    return "demo" if has_demo_checkpoint(get_spec(model).name) else None


def _artifact_directory(request: BuildRequest, weights: str | None, say: Progress) -> Path:
    """`--artifacts DIR` as given when it holds a manifest (no PyTorch needed on the device),
    else the export stage run first (which needs the export extra)."""
    if request.artifacts is not None and (request.artifacts / "manifest.json").is_file():
        return request.artifacts
    from segexport.prerequisites import artifact_directory

    return artifact_directory(request.artifacts, request.model, weights, say)


def prepare_onnx(request: BuildRequest, say: Progress) -> tuple[Path, dict[str, Any], str]:
    """The artifact directory, its manifest and the verified ONNX to build from, making them if missing."""
    options = request.options
    weights = request.weights
    if weights is None and request.model is not None:
        weights = _default_weights(request.model)
    directory = _artifact_directory(request, weights, say)
    target = directory / engine_file_name(options.precision)
    manifest = read_manifest(directory)
    begin_stage(directory, manifest, [target.name], "the engine is written there")
    if target.name in manifest["files"] and not request.force:
        raise SegexportError(f"{target} already exists; pass --force to replace it")
    source = FP32_ONNX if options.legacy_fp16_flag else onnx_file_name(options.precision)
    if source not in manifest["files"]:
        from segexport.quantize import QuantizeRequest, quantize_artifact

        say(f"no {source} in {directory}: running the {options.precision.upper()} stage first")
        quantize_artifact(
            QuantizeRequest(
                artifacts=directory,
                fp16=options.precision == "fp16",
                int8=options.precision == "int8",
                threads=request.threads,
                calib=QuantizeRequest.calib if request.calib is None else request.calib,
            ),
            progress=say,
        )
    manifest = read_manifest(directory)
    vouched_path(directory, source, manifest)
    return directory, manifest, source


def check_readiness(
    directory: Path, manifest: dict[str, Any], source: str, version: str, ignore: bool, say: Progress
) -> None:
    """Refuse a build the installed TensorRT's parser or builder would reject (offline rules);
    print what would run slower than the graph intends."""
    from segexport import readiness  # onnx: needed on the device for this check only

    alias = readiness.target_for_version(version)
    source_only = {**manifest, "files": {source: manifest["files"][source]}}
    report = readiness.check_artifacts(directory, alias, source_only)
    for finding in readiness.findings_for(report, source, alias, "slow"):
        say(f"readiness (slow): {finding['message']} [{finding['node']}] ({finding['source']})")
    errors = readiness.findings_for(report, source, alias, "error")
    if not errors:
        return
    first = errors[0]
    message = (
        f"{source} has {len(errors)} error finding(s) for TensorRT {version} ({alias} rules), e.g. "
        f"{first['rule']} at {first['node']}: {first['message']} ({first['source']}); "
        f"see `segexport check-trt --artifacts {directory} --target {alias}`"
    )
    if not ignore:
        raise SegexportError(message + "; pass --ignore-readiness to try anyway")
    say(f"readiness: {message}; building anyway (--ignore-readiness)")


def build_artifact(request: BuildRequest, progress: Progress | None = None) -> dict[str, Any]:
    """Build, check and record `model.<precision>.engine`; returns the updated manifest.

    Without TensorRT this still prepares the verified ONNX, then raises UnavailableError
    naming it, so the user can build on the target device.
    """
    say = progress or (lambda _message: None)
    options = request.options
    check_options(options, None)
    directory, manifest, source = prepare_onnx(request, say)
    reference = engine_reference(directory, manifest, say)
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise UnavailableError(
            f"TensorRT is not importable here ({reason}); the verified {directory / source} is ready: "
            f"build it on the target device with "
            f"`segexport trt --artifacts {directory} --precision {options.precision}`"
        )
    import tensorrt as trt

    check_options(options, trt.__version__)
    check_readiness(directory, manifest, source, trt.__version__, request.ignore_readiness, say)
    profile = derive_profile(manifest, options)
    gpu = current_gpu()
    options = _device_defaults(options, directory, say)
    name = engine_file_name(options.precision)
    say(f"building {name} with TensorRT {trt.__version__} on {gpu.name}")
    started = time.perf_counter()
    plan = build_engine(directory / source, profile, options, say)
    record = engine_build_record(options, profile, trt.__version__, gpu, source)
    record["build_seconds"] = round(time.perf_counter() - started, 2)
    delivered = record["delivered"] = delivered_precisions(inspect_engine(plan))
    say(f"delivered precision: {delivered['precisions']} over {delivered['layers']} layers")
    refuse_contradiction(name, options.precision, record["delivered"])
    report = check_engine(plan, record, directory / source, reference, profile, request.threads, say)
    record["verification"] = report.to_dict()
    if not report.passed:
        raise VerificationError(
            f"{engine_file_name(options.precision)} fails its parity check; no engine written. "
            + " | ".join(report.failures()[:3])
        )
    return record_engine(directory, manifest, engine_file_name(options.precision), plan, record)


def record_engine(
    directory: Path, manifest: dict[str, Any], name: str, plan: bytes, record: dict[str, Any]
) -> dict[str, Any]:
    """Write the engine and vouch for it (only it: what else is in the directory stays as
    the manifest had it). The caller has refused a vouched engine without --force."""
    check_vouched_files(directory, manifest, rewriting=[name])  # before the engine lands beside them
    atomic_write(directory / name, lambda temp: temp.write_bytes(plan))
    manifest.setdefault("engines", {})[name] = record
    return record_files(directory, manifest, [name])


def engine_build_record(
    options: BuildOptions, profile: Profile, tensorrt_version: str, gpu: GpuIdentity, source: str
) -> dict[str, Any]:
    """What the runtime checks before deserializing, and what a user needs to rebuild it."""
    return {
        "tensorrt": tensorrt_version,
        "gpu": gpu.to_dict(),
        "precision": options.precision,
        "source_onnx": source,
        "strongly_typed": not options.legacy_fp16_flag,
        "profile": profile,
        "version_compatible": options.version_compatible,
        "hardware_compat": options.hardware_compat,
        "dla_core": options.dla_core,
        "options": options.to_dict(),
    }


def engine_reference(directory: Path, manifest: dict[str, Any], say: Progress) -> RecordedReference | None:
    """The recorded PyTorch reference the engine is judged against, checked before any build.

    Image models need reference.npz (missing, unvouched, altered or malformed: one line, no
    build); random weights are not judged on it (near-ties), as before. RoI heads have none.
    """
    if "preprocessing" not in manifest:
        return None
    reference = read_reference(directory, manifest)
    if not manifest["model"].get("weights"):
        say(f"random weights: the engine is not judged against {REFERENCE_FILE} (only against ONNX Runtime)")
        return None
    say(f"the engine will be {NOT_RERUN}")
    return reference


def free_device_memory() -> int | None:
    """Bytes free on the current CUDA device (on a Jetson: shared with the CPU), or None."""
    try:
        free, _total = Cuda(import_cudart()).call("cudaMemGetInfo")
        return int(free)
    except Exception:  # no bindings, no device: TensorRT's own default then
        return None


def _device_defaults(options: BuildOptions, directory: Path, say: Progress) -> BuildOptions:
    """The workspace limit from the device's free memory, and the timing cache beside the
    artifact, where the user set neither."""
    changes: dict[str, Any] = {}
    if options.workspace_gib is None:
        free = free_device_memory()
        if free:
            changes["workspace_gib"] = round(free * WORKSPACE_SHARE / (1 << 30), 3)
            say(
                f"workspace limit {changes['workspace_gib']:.2f} GiB ({WORKSPACE_SHARE:.0%} of "
                f"{free / (1 << 30):.2f} GiB free; --workspace to change)"
            )
    if options.timing_cache is None:
        changes["timing_cache"] = directory / TIMING_CACHE
        reused = "reusing" if changes["timing_cache"].is_file() else "writing"
        say(f"{reused} the timing cache {changes['timing_cache']}")
    return replace(options, **changes)


def inspect_engine(plan: bytes) -> str:
    """The engine inspector's JSON of every layer (the build asked for DETAILED profiling)."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise SegexportError("TensorRT could not deserialize the engine it just built")
    inspector = engine.create_engine_inspector()
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def _progress_monitor(say: Progress) -> Any:
    """TensorRT's builder phases as progress lines (top-level phases only; steps would flood)."""
    import tensorrt as trt

    class PhaseMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: SupportsInt) -> None:
            if not parent_phase:
                say(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: SupportsInt) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            pass

    return PhaseMonitor()


def build_engine(source: Path, profile: Profile, options: BuildOptions, say: Progress) -> bytes:
    """Parse the ONNX and build a serialized engine: the only place that drives TensorRT's builder."""
    require_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if options.legacy_fp16_flag else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    say(f"  parsing {source.name}")
    if not parser.parse_from_file(str(source)):
        errors = [parser.get_error(index) for index in range(parser.num_errors)]
        described = [
            f"node {error.node_name() or error.node()} ({error.node_operator()}): {error.desc()}"
            for error in errors
        ]
        raise SegexportError(f"{source}: TensorRT's ONNX parser failed: " + "; ".join(described[:3]))
    config = builder.create_builder_config()
    # Per-layer precisions for the engine inspector: the record shows what was delivered.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if options.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    if options.opt_level is not None:
        config.builder_optimization_level = options.opt_level
    if options.legacy_fp16_flag:
        # 10.x only (check_options refused 11.x); looked up by name because 11.x removed it.
        legacy_flag = "FP16"
        config.set_flag(getattr(trt.BuilderFlag, legacy_flag))
    if options.dla_core is not None:
        if options.dla_core >= builder.num_DLA_cores:
            raise SegexportError(
                f"--dla-core {options.dla_core}: this device has {builder.num_DLA_cores} DLA cores"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        if options.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compat == "ampere+":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    optimization = builder.create_optimization_profile()
    for name, shapes in profile.items():
        optimization.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(optimization)
    monitor = _progress_monitor(say)
    config.progress_monitor = monitor  # must outlive the build: kept in this frame until it returns
    cache_path = options.timing_cache
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
    say("  building (TensorRT times its kernels: minutes for large models)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SegexportError(f"{source}: TensorRT could not build an engine (its log above says why)")
    if cache_path is not None:
        timing_cache = config.get_timing_cache()
        atomic_write(cache_path, lambda temp: temp.write_bytes(bytes(timing_cache.serialize())))
    return bytes(serialized)
