"""PyTorch -> ONNX with dynamic batch/height/width that really work, then onnxsim, then parity.

The export uses the `torch.export`-based exporter with explicit `Dim`s: height and
width are declared as multiples of the model's output stride, so the traced graph
computes every intermediate size from the input instead of baking it in. The trace
uses at least 2 along every dynamic axis, because `torch.export` specialises axes that
are 1 in the example. Nothing is trusted on faith: the artifact is run at the export
shape and at others (batch > 1, another aspect ratio) and compared with PyTorch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import platform
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from segexport import __version__, readiness
from segexport.compare import Tolerance, VerificationReport
from segexport.errors import SegexportError, VerificationError, first_line
from segexport.importers import EXPECTED, Imported, Preprocessing, build_imported, import_weights
from segexport.reference import TorchRunner, verify_runners
from segexport.runtime import OnnxRuntimeRunner, Runner
from segexport.runtime.artifacts import (
    MANIFEST,
    SCHEMA_VERSION,
    describe_files,
    sha256_file,
    staged_directory,
    write_json_atomic,
)
from segexport.shapes import DynamicRange, InputShape
from segexport.weights import Weights, load_weights, resolve_weights
from segexport.zoo.registry import ModelSpec, create_model, get_spec

Progress = Callable[[str], None]

DEFAULT_OPSET = 18
# 17: first with LayerNormalization. TensorRT's own range differs per release (10.1-GA's operator
# list: 9..20; 10.16 and 11.1: 9..24): `segexport check-trt` reports an opset beyond a target's range.
SUPPORTED_OPSETS = range(17, 22)
MODEL_FILE = "model.onnx"
# What the graph hands over: class logits, a mask of class ids (ArgMax over classes in the
# graph, so only ids cross from the device: 2 MB instead of 160 MB at 1024x2048 with 19
# classes), or both.
HEADS = ("logits", "mask", "logits+mask")
MASK_OUTPUT = "mask"
MASK_TYPES = {"uint8": (onnx.TensorProto.UINT8, np.uint8), "int32": (onnx.TensorProto.INT32, np.int32)}
DEFAULT_MODEL = "segformer-b0"
# Size caps (lifted by --allow-large): an export runs the model at every shape it verifies,
# so those may hold at most 8 Mpx in all (B x H x W: 2x2048x2048, 8x1024x1024); the range
# it declares may reach 8192 per side and batch 1024 (declared, not run, so it costs nothing
# now, but a deployment will allocate for it). Past these a typo costs tens of GB.
MAX_RUN_PIXELS = 8 * 1024 * 1024
MAX_SIDE = 8192
MAX_BATCH = 1024


@dataclass
class ExportRequest:
    """Everything `segexport onnx` takes; unset fields fall back to the model's defaults."""

    model: str | None  # None: the model the weights' files describe, else DEFAULT_MODEL
    num_classes: int | None = None
    # a checkpoint path, a model directory (Hugging Face), or "demo" for the shipped one
    weights: str | Path | None = None
    size: tuple[int, int] | None = None
    batch: int = 1
    min_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None
    max_batch: int | None = None
    opset: int = DEFAULT_OPSET
    out_dir: Path | None = None
    force: bool = False
    model_options: dict[str, Any] = field(default_factory=dict)
    verify_shapes: list[InputShape] | None = None
    tolerance: Tolerance = field(default_factory=Tolerance)
    threads: int | None = None
    head: str = "logits"
    mask_dtype: str = "uint8"
    allow_large: bool = False  # lift the size caps (MAX_RUN_PIXELS, MAX_SIDE, MAX_BATCH)


@dataclass(frozen=True)
class ExportPlan:
    """A validated request: the shapes and ranges the artifact will promise."""

    spec: ModelSpec
    num_classes: int
    export_shape: InputShape
    dynamic_range: DynamicRange
    verify_shapes: tuple[InputShape, ...]
    out_dir: Path
    weights: Weights | None
    class_names: tuple[str, ...]
    imported: Imported | None = None
    options: dict[str, Any] = field(default_factory=dict)
    preprocessing: Preprocessing | None = None


def _imported(request: ExportRequest) -> Imported | None:
    """Foreign weights converted for a zoo model, refused where the request contradicts them."""
    if request.weights is None or str(request.weights) == "demo":
        return None
    imported = import_weights(Path(request.weights))
    if imported is None:
        if request.model is None:
            raise SegexportError(
                f"{request.weights}: not a layout segexport recognises by itself (expected {EXPECTED}); "
                "for a segexport state_dict pass --model"
            )
        return None
    if request.model is not None and get_spec(request.model).name != imported.model:
        raise SegexportError(
            f"--model {request.model} disagrees with the weights, which are {imported.model} "
            f"({imported.format}, {imported.path})"
        )
    if imported.partial and request.num_classes is not None:  # the head is not imported
        imported = dataclasses.replace(imported, num_classes=request.num_classes)
    if request.num_classes is not None and request.num_classes != imported.num_classes:
        raise SegexportError(
            f"--num-classes {request.num_classes} disagrees with the weights' "
            f"{imported.num_classes}-class head"
        )
    clash = [
        k
        for k, v in request.model_options.items()
        if k in imported.options and imported.options[k] != v and k not in imported.guessed
    ]
    if clash:
        raise SegexportError(
            f"--model-arg {clash[0]}={request.model_options[clash[0]]} disagrees with the weights "
            f"({clash[0]}={imported.options[clash[0]]})"
        )
    return dataclasses.replace(imported, options={**imported.options, **request.model_options})


def plan_export(request: ExportRequest) -> ExportPlan:
    """Resolve defaults and refuse, up front, anything the artifact could not honour."""
    imported = _imported(request)
    spec = get_spec(imported.model if imported else request.model or DEFAULT_MODEL)
    weights = None
    if request.weights is not None and imported is None:
        weights = resolve_weights(spec.name, request.weights)
    trained_names = weights.class_names if weights else None
    if imported is not None:
        trained_names = list(imported.class_names or ())
        num_classes = imported.num_classes
    elif request.num_classes is not None:
        num_classes = request.num_classes
    else:
        num_classes = len(trained_names) if trained_names else spec.default_num_classes
    if num_classes < 1:
        raise SegexportError(f"--num-classes must be >= 1, got {num_classes}")
    check_head(spec, request.head, request.mask_dtype, num_classes)
    if request.opset not in SUPPORTED_OPSETS:
        raise SegexportError(
            f"--opset {request.opset} is not supported; use {SUPPORTED_OPSETS.start}.."
            f"{SUPPORTED_OPSETS.stop - 1}"
        )
    default = spec.default_range()
    max_batch = default.max_batch if request.max_batch is None else request.max_batch
    if max_batch < 1:
        raise SegexportError(f"--max-batch must be >= 1, got {max_batch}")
    if request.batch < 1 or max_batch < request.batch:
        raise SegexportError(f"--batch must be between 1 and --max-batch {max_batch}, got {request.batch}")
    if spec.input_kind == "image":
        size = request.size or (imported.size if imported else None) or spec.default_size
        min_size = request.min_size or _at_most(default.min_size, size)
        max_size = request.max_size or _at_least(default.max_size, size)
        for label, (height, width) in (("--size", size), ("--min-size", min_size), ("--max-size", max_size)):
            try:
                spec.check_size(height, width)
            except SegexportError as error:
                raise SegexportError(f"{label}: {error}") from None
        dynamic = DynamicRange(1, max_batch, min_size, max_size)
        export_shape = InputShape(request.batch, *size)
    else:
        if request.size or request.min_size or request.max_size:
            raise SegexportError(f"{spec.name} takes fixed 14x14 RoI features; sizes do not apply")
        dynamic = DynamicRange(1, max_batch)
        export_shape = InputShape(request.batch)
    if not dynamic.contains(export_shape):
        raise SegexportError(f"export shape {export_shape} is outside the range {dynamic.describe()}")
    shapes = [export_shape, *(request.verify_shapes or _default_check_shapes(spec, export_shape, dynamic))]
    for shape in shapes:
        if spec.input_kind == "image":
            assert shape.height is not None and shape.width is not None
            spec.check_size(shape.height, shape.width)
        if not dynamic.contains(shape):
            raise SegexportError(f"verification shape {shape} is outside the range {dynamic.describe()}")
    if not request.allow_large:
        _check_caps(shapes, dynamic)
    if request.threads is not None and request.threads < 1:
        raise SegexportError(f"--threads must be >= 1, got {request.threads}")
    out_dir = request.out_dir or Path("artifacts") / spec.name
    if trained_names and len(trained_names) == num_classes:
        class_names = tuple(trained_names)
    else:
        class_names = tuple(f"class_{i}" for i in range(num_classes))
    return ExportPlan(
        spec,
        num_classes,
        export_shape,
        dynamic,
        tuple(dict.fromkeys(shapes)),
        out_dir,
        weights,
        class_names,
        imported,
        {**(imported.options if imported else {}), **request.model_options},
        imported.preprocessing if imported else None,
    )


def _check_caps(shapes: list[InputShape], dynamic: DynamicRange) -> None:
    """Refuse sizes that would exhaust memory unless the user passed --allow-large."""
    override = "pass --allow-large if you mean it"
    for shape in shapes:
        pixels = shape.batch * (shape.height or 1) * (shape.width or 1)
        if pixels > MAX_RUN_PIXELS:
            raise SegexportError(
                f"shape {shape} runs {pixels / 2**20:.1f} Mpx at once, over the "
                f"{MAX_RUN_PIXELS // 2**20} Mpx an export runs by default (B x H x W); {override}"
            )
    if dynamic.max_batch > MAX_BATCH:
        raise SegexportError(f"--max-batch {dynamic.max_batch} is over {MAX_BATCH}; {override}")
    if dynamic.max_size and max(dynamic.max_size) > MAX_SIDE:
        height, width = dynamic.max_size
        raise SegexportError(f"--max-size {height}x{width} is over {MAX_SIDE} per side; {override}")


def _at_most(limit: tuple[int, int] | None, size: tuple[int, int]) -> tuple[int, int]:
    assert limit is not None
    return (min(limit[0], size[0]), min(limit[1], size[1]))


def _at_least(limit: tuple[int, int] | None, size: tuple[int, int]) -> tuple[int, int]:
    assert limit is not None
    return (max(limit[0], size[0]), max(limit[1], size[1]))


def _default_check_shapes(spec: ModelSpec, shape: InputShape, dynamic: DynamicRange) -> list[InputShape]:
    """A batch > 1 at the export size, and batch 1 at another aspect ratio (512x512 -> 384x640)."""
    checks = []
    other_batch = min(2 if shape.batch != 2 else 3, dynamic.max_batch)
    if other_batch > 1 and other_batch != shape.batch:
        checks.append(InputShape(other_batch, shape.height, shape.width))
    if spec.input_kind == "roi":
        checks.append(InputShape(dynamic.max_batch))
        return checks
    assert shape.height and shape.width and dynamic.min_size and dynamic.max_size
    stride = spec.stride
    height = _clamp(
        _round_to(shape.height * 3 // 4, stride), dynamic.min_size[0], dynamic.max_size[0], stride
    )
    width = _clamp(_round_to(shape.width * 5 // 4, stride), dynamic.min_size[1], dynamic.max_size[1], stride)
    if height * shape.width == width * shape.height:  # same aspect: grow width instead
        width = _clamp(shape.width + stride, dynamic.min_size[1], dynamic.max_size[1], stride)
    if height * shape.width != width * shape.height:
        checks.append(InputShape(1, height, width))
    return checks


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def _clamp(value: int, low: int, high: int, multiple: int) -> int:
    low_ok = -(-low // multiple) * multiple
    high_ok = high // multiple * multiple
    return min(max(value, low_ok), high_ok)


# --------------------------------------------------------------------------- tracing


def check_head(spec: ModelSpec, head: str, mask_dtype: str, num_classes: int) -> None:
    """Refuse a mask head that the model or the id type cannot carry."""
    if head not in HEADS:
        raise SegexportError(f"--head must be one of {', '.join(HEADS)}, got {head!r}")
    if mask_dtype not in MASK_TYPES:
        raise SegexportError(f"--mask-dtype must be one of {', '.join(MASK_TYPES)}, got {mask_dtype!r}")
    if head == "logits":
        return
    if not spec.logits_outputs or spec.input_kind != "image":
        raise SegexportError(f"--head {head}: {spec.name} has no per-pixel class logits to argmax")
    if num_classes < 2:
        raise SegexportError(f"--head {head} needs at least 2 classes (a 1-class model's mask is its sign)")
    if mask_dtype == "uint8" and num_classes > 256:
        raise SegexportError(f"--mask-dtype uint8 holds 256 classes; this model has {num_classes}: use int32")


def add_mask_head(proto: onnx.ModelProto, logits: str, head: str, mask_dtype: str) -> onnx.ModelProto:
    """ArgMax over the classes of `logits` (axis 1) as a `mask` output of class ids.

    Ties resolve to the first class in ONNX Runtime, TensorRT and torch.argmax alike. With
    `head="mask"` the logits stop being a graph output, so nothing allocates or copies them.
    """
    if head == "logits":
        return proto
    taken = {name for node in proto.graph.node for name in node.output} | {i.name for i in proto.graph.input}
    if MASK_OUTPUT in taken or f"{MASK_OUTPUT}_int64" in taken:
        raise SegexportError(f"the graph already has a tensor named {MASK_OUTPUT}; cannot add a mask head")
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    elem_type = MASK_TYPES[mask_dtype][0]
    ids = f"{MASK_OUTPUT}_int64"
    graph.node.extend(
        [
            onnx.helper.make_node("ArgMax", [logits], [ids], name="mask_head_argmax", axis=1, keepdims=0),
            onnx.helper.make_node("Cast", [ids], [MASK_OUTPUT], name="mask_head_cast", to=elem_type),
        ]
    )
    declared = next(o for o in graph.output if o.name == logits)
    dims = list(declared.type.tensor_type.shape.dim)
    shape = [d.dim_param or d.dim_value for d in (dims[:1] + dims[2:])]
    graph.output.append(onnx.helper.make_tensor_value_info(MASK_OUTPUT, elem_type, shape))
    if head == "mask":
        graph.output.remove(declared)
    return model


class _WithMask:
    """The PyTorch reference with the head's outputs: `mask` is torch's argmax over classes."""

    def __init__(self, reference: Runner, logits: str, head: str, mask_dtype: str) -> None:
        self._reference = reference
        self._logits, self._head = logits, head
        self._dtype = MASK_TYPES[mask_dtype][1]
        self.name = reference.name

    @property
    def output_names(self) -> list[str]:
        kept = [n for n in self._reference.output_names if not (self._head == "mask" and n == self._logits)]
        return [*kept, MASK_OUTPUT]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._reference.infer(feeds)
        outputs[MASK_OUTPUT] = outputs[self._logits].argmax(axis=1).astype(self._dtype)
        return {name: outputs[name] for name in self.output_names}


class _OutputsAsTuple(nn.Module):
    """Exposes any model's outputs (tensor, tuple, dict) as a flat tuple for the exporter."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from segexport.reference import flatten_outputs

        return flatten_outputs(self.model(*inputs))


def _trace_shape(plan: ExportPlan) -> InputShape:
    """The export shape with every dynamic axis at >= 2 (torch.export specialises 1s)."""
    shape, dynamic = plan.export_shape, plan.dynamic_range
    batch = shape.batch if shape.batch >= 2 else min(2, dynamic.max_batch)
    if shape.height is None or shape.width is None:
        return InputShape(batch)
    stride = plan.spec.stride
    assert dynamic.max_size is not None
    height = shape.height if shape.height >= 2 * stride else min(2 * stride, dynamic.max_size[0])
    width = shape.width if shape.width >= 2 * stride else min(2 * stride, dynamic.max_size[1])
    return InputShape(batch, height, width)


def _dynamic_shapes(plan: ExportPlan) -> dict[str, dict[int, Any]]:
    from torch.export import Dim

    dynamic = plan.dynamic_range
    spec = plan.spec
    batch = Dim(spec.batch_axis, min=dynamic.min_batch, max=dynamic.max_batch)
    if spec.input_kind == "roi":
        return {"roi_features": {0: batch}, "labels": {0: batch}}
    assert dynamic.min_size and dynamic.max_size
    stride = spec.stride
    # Height/width in units of the stride: the graph then knows they are multiples of it.
    rows = Dim("height_units", min=dynamic.min_size[0] // stride, max=dynamic.max_size[0] // stride)
    cols = Dim("width_units", min=dynamic.min_size[1] // stride, max=dynamic.max_size[1] // stride)
    return {"image": {0: batch, 2: stride * rows, 3: stride * cols}}


def trace_to_onnx(model: nn.Module, plan: ExportPlan, opset: int) -> onnx.ModelProto:
    """Trace with torch.export and convert; graph I/O axes get readable names."""
    spec = plan.spec
    example = spec.example_inputs(_trace_shape(plan), plan.num_classes, torch.Generator().manual_seed(0))
    captured = io.StringIO()
    exporter_log = logging.getLogger("torch.onnx")
    previous_level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(captured), warnings.catch_warnings(), torch.no_grad():
            # The exporter's deprecation chatter is not the user's business.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message="The axis name", category=UserWarning)
            program = torch.onnx.export(
                _OutputsAsTuple(model).eval(),
                tuple(example.values()),
                dynamo=True,
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                # forward(*inputs) takes one varargs tuple, so the per-input specs nest once.
                dynamic_shapes=(tuple(_dynamic_shapes(plan).values()),),
                opset_version=opset,
                external_data=False,
            )
    except Exception as error:  # torch.export raises many types; all mean "could not trace"
        raise SegexportError(f"{spec.name}: torch.onnx.export failed ({_export_reason(error)})") from error
    finally:
        exporter_log.setLevel(previous_level)
    assert program is not None
    proto = program.model_proto
    name_dynamic_axes(proto, _symbol_names(program.exported_program, plan), spec.stride)
    return proto


def _export_reason(error: Exception) -> str:
    """The exporter's one-line cause, from its 'Exception summary' section when present."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("<class"):
            return line
    return lines[0] if lines else type(error).__name__


def _symbol_names(program: Any, plan: ExportPlan) -> dict[str, str]:
    """Map torch.export's internal symbols (`s12`) to our axis names (`height_units`).

    The exporter names graph inputs after our Dims but leaves outputs with internal
    symbols (`8*s12`); reading the symbols off the traced inputs lets both be renamed.
    """
    axes = {0: plan.spec.batch_axis, 2: "height_units", 3: "width_units"}
    names: dict[str, str] = {}
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        for index, size in enumerate(node.meta["val"].shape):
            if isinstance(size, torch.SymInt) and index in axes:
                for symbol in size.node.expr.free_symbols:
                    names[str(symbol)] = axes[index]
    return names


_TERM = re.compile(r"^(?:(\d+)\*)?(height|width)_units$")


def name_dynamic_axes(proto: onnx.ModelProto, symbols: dict[str, str], stride: int) -> None:
    """Rename axes like `32*height_units` or `8*s12` to `height`, `height/4`, `batch`."""
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.dim_param:
                continue
            text = re.sub(r"\b[su]\d+\b", lambda m: symbols.get(m.group(0), m.group(0)), dim.dim_param)
            match = _TERM.match(text)
            if match:
                factor = int(match.group(1) or 1)
                axis = match.group(2)
                if factor == stride:
                    text = axis
                elif stride % factor == 0:
                    text = f"{axis}/{stride // factor}"
                else:
                    text = f"{axis}*{factor}/{stride}"
            dim.dim_param = text


def declared_shapes(values: Any) -> list[dict[str, Any]]:
    """Name, element type and symbolic shape of graph inputs/outputs, as JSON."""
    described = []
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
        described.append(
            {
                "name": value.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                "shape": dims,
            }
        )
    return described


# onnxsim's batched MatMul+Add -> Reshape/Gemm/Reshape rewrite adds Shape arithmetic
# around every Linear (SegFormer-B0: 459 -> 601 nodes) and buys TensorRT nothing; it
# also hides the MatMul inputs that INT8 Q/DQ placement targets.
_SKIPPED_SIMPLIFIER_PASSES = ["fuse_matmul_add_bias_into_gemm", "fuse_matmul_add_bias_into_gemm_batched"]


def simplify(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """onnxsim the graph; on failure keep the raw export and return the reason."""
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(proto, skipped_optimizers=_SKIPPED_SIMPLIFIER_PASSES)
    except Exception as error:  # onnxsim wraps C++ errors in generic exceptions
        explicit_squeeze_axes(proto)
        return proto, f"onnxsim failed: {first_line(error)}"
    if not ok:
        explicit_squeeze_axes(proto)
        return proto, "onnxsim's own check failed"
    explicit_squeeze_axes(simplified)
    return simplified, None


def explicit_squeeze_axes(proto: onnx.ModelProto) -> int:
    """Give every Squeeze without an axes input explicit axes; returns how many were fixed.

    TensorRT's parsers infer omitted axes only from fully static input shapes (10.x importer),
    and 11.x announces omitted axes only from 11.5: explicit axes are read by every release.
    Only inputs whose shape inference gives every dim are fixed (the dims equal to 1 are the
    axes); a Squeeze on symbolic dims is left for `segexport check-trt` to report.
    """
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        return 0
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    shapes = {
        v.name: v.type.tensor_type.shape
        for v in [*inferred.value_info, *inferred.input]
        if v.type.tensor_type.HasField("shape")
    }
    shapes.update(
        {
            init.name: onnx.TensorShapeProto(dim=[{"dim_value": d} for d in init.dims])
            for init in proto.graph.initializer
        }
    )
    fixed = 0
    for node in proto.graph.node:
        if node.op_type != "Squeeze" or (len(node.input) > 1 and node.input[1]):
            continue
        shape = shapes.get(node.input[0])
        if shape is None or not all(d.HasField("dim_value") for d in shape.dim):
            continue
        axes = [i for i, d in enumerate(shape.dim) if d.dim_value == 1]
        name = f"{node.name or node.output[0]}_axes"
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(axes, dtype=np.int64), name))
        del node.input[1:]
        node.input.append(name)
        fixed += 1
    return fixed


def versions() -> dict[str, str]:
    import onnxruntime
    import onnxsim

    return {
        "segexport": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxsim": getattr(onnxsim, "__version__", "unknown"),
        "numpy": np.__version__,
    }


# --------------------------------------------------------------------------- pipeline


def build_model(plan: ExportPlan) -> nn.Module:
    if plan.imported is not None:
        return build_imported(plan.imported, plan.options, plan.num_classes)
    model = create_model(plan.spec.name, num_classes=plan.num_classes, **plan.options)
    if plan.weights is not None:
        load_weights(model, plan.weights.path)
    return model.eval()


def export_onnx(request: ExportRequest, progress: Progress | None = None) -> dict[str, Any]:
    """Export, simplify and verify one model; returns the manifest written beside it.

    Raises VerificationError (and leaves nothing behind) when any shape exceeds the
    tolerance.
    """
    say = progress or (lambda _message: None)
    plan = plan_export(request)
    spec = plan.spec
    started = time.perf_counter()
    with staged_directory(plan.out_dir, request.force, artifacts_only=True) as staging:
        say(f"[1/4] building {spec.name} ({plan.num_classes} classes)")
        model = build_model(plan)
        source_check = None
        if plan.imported is not None:
            from segexport.importers.check import check_import, describe_check

            say(f"      checking the {plan.imported.format} import")
            assert plan.export_shape.height and plan.export_shape.width
            size = (plan.export_shape.height, plan.export_shape.width)
            source_check = check_import(plan.imported, model, size, request.tolerance)
            say(f"      {describe_check(source_check)}")
        say(f"[2/4] exporting to ONNX (opset {request.opset}, {plan.dynamic_range.describe()})")
        traced_at = time.perf_counter()
        raw = trace_to_onnx(model, plan, request.opset)
        export_seconds = time.perf_counter() - traced_at
        say("[3/4] simplifying with onnxsim")
        simplified_at = time.perf_counter()
        proto, simplify_note = simplify(raw)
        simplify_seconds = time.perf_counter() - simplified_at
        logits = spec.logits_outputs[0] if spec.logits_outputs else ""
        proto = add_mask_head(proto, logits, request.head, request.mask_dtype)
        model_path = staging / MODEL_FILE
        onnx.save(proto, str(model_path))
        say(f"[4/4] verifying against PyTorch at {len(plan.verify_shapes)} shapes")
        verified_at = time.perf_counter()
        reference: Runner = TorchRunner(model, spec.output_names, request.threads)
        if request.head != "logits":
            reference = _WithMask(reference, logits, request.head, request.mask_dtype)
        report = verify_runners(
            spec,
            plan.num_classes,
            reference,
            OnnxRuntimeRunner(model_path, threads=request.threads),
            plan.verify_shapes,
            request.tolerance,
            progress=lambda message: say(f"      {message}"),
        )
        verify_seconds = time.perf_counter() - verified_at
        manifest = _manifest(
            plan,
            request,
            proto,
            raw,
            simplify_note,
            report,
            {
                "export": round(export_seconds, 2),
                "simplify": round(simplify_seconds, 2),
                "verify": round(verify_seconds, 2),
                "total": round(time.perf_counter() - started, 2),
            },
            source_check,
        )
        if not report.passed:
            raise VerificationError(
                f"{spec.name}: ONNX output differs from PyTorch; no artifact written. "
                + " | ".join(report.failures()[:3])
            )
        manifest["files"] = describe_files(staging, [MODEL_FILE])
        manifest["trt_readiness"] = readiness.check_artifacts(staging, "all", manifest)
        for line in readiness.summary_lines(manifest["trt_readiness"]):
            say(line)
        write_json_atomic(staging / MANIFEST, manifest)
    return manifest


def artifact_directory(
    directory: Path | None, model: str | None, weights: str | None, progress: Progress
) -> Path:
    """The artifact directory a later stage works on: `directory`, or artifacts/MODEL, exported
    first (with `weights`) when it holds no manifest yet."""
    if directory is None:
        if model is None:
            raise SegexportError("pass --model NAME or --artifacts DIR")
        directory = Path("artifacts") / get_spec(model).name
    if not (directory / MANIFEST).is_file():
        if model is None:
            raise SegexportError(f"{directory} holds no exported model; pass --model to export it first")
        progress(f"no FP32 artifact in {directory}: exporting {model} first")
        export_onnx(ExportRequest(model, weights=weights, out_dir=directory), progress=progress)
    return directory


def retrace(manifest: dict[str, Any], model: nn.Module) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Export `model` again exactly as the artifact was: (raw export, the graph as shipped).

    Same exporter, shapes, opset and simplification give the same node and tensor names,
    so intermediate tensors can be matched; the raw export keeps the exporter's metadata
    (PyTorch module paths) that onnxsim drops.
    """
    info = manifest["model"]
    batch, height, width = (int(v) for v in manifest["export_shape"].split("x"))
    axes = manifest["dynamic_axes"]
    plan = plan_export(
        ExportRequest(
            info["name"],
            num_classes=info["num_classes"],
            size=(height, width),
            batch=batch,
            min_size=(axes["height"][0], axes["width"][0]),
            max_size=(axes["height"][1], axes["width"][1]),
            max_batch=axes["batch"][1],
            opset=manifest["onnx"]["opset"],
            model_options=info.get("options", {}),
        )
    )
    raw = trace_to_onnx(model, plan, manifest["onnx"]["opset"])
    return raw, simplify(raw)[0] if manifest["onnx"]["simplified"] else raw


def _head_record(request: ExportRequest, spec: ModelSpec) -> dict[str, Any]:
    """What a runtime needs to use the head: which output holds ids, and how masks resize."""
    if request.head == "logits":
        return {"kind": "logits", "mask": None}
    return {
        "kind": request.head,
        "mask": {
            "output": MASK_OUTPUT,
            "dtype": request.mask_dtype,
            "argmax_of": spec.logits_outputs[0],
            "axis": 1,
            # Ids cannot be interpolated: a runtime resizing to the input's size uses nearest.
            "resize": "nearest",
        },
    }


def _manifest(
    plan: ExportPlan,
    request: ExportRequest,
    proto: onnx.ModelProto,
    raw: onnx.ModelProto,
    simplify_note: str | None,
    report: VerificationReport,
    seconds: dict[str, float],
    source_check: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec = plan.spec
    dynamic = plan.dynamic_range
    axes: dict[str, list[int]] = {spec.batch_axis: [dynamic.min_batch, dynamic.max_batch]}
    if dynamic.min_size and dynamic.max_size:
        axes["height"] = [dynamic.min_size[0], dynamic.max_size[0]]
        axes["width"] = [dynamic.min_size[1], dynamic.max_size[1]]
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "name": spec.name,
            "family": spec.family,
            "description": spec.description,
            "options": plan.options,
            "num_classes": plan.num_classes,
            "class_names": list(plan.class_names),
            "weights": _weights_record(plan),
            "trained": plan.weights.record if plan.weights and plan.weights.record else None,
        },
        "inputs": declared_shapes(proto.graph.input),
        "outputs": declared_shapes(proto.graph.output),
        "dynamic_axes": axes,
        "export_shape": str(plan.export_shape),
        "onnx": {
            "opset": request.opset,
            "exporter": "torch.onnx.export(dynamo=True)",
            "simplified": simplify_note is None,
            "simplify_note": simplify_note,
            "nodes_before_simplify": len(raw.graph.node),
            "nodes": len(proto.graph.node),
        },
        "versions": versions(),
        "seconds": seconds,
        "verification": {"fp32": report.to_dict()},
        "head": _head_record(request, spec),
    }
    if plan.imported is not None:
        manifest["source"] = {**plan.imported.record(), "check": source_check}
    if spec.input_kind == "image":
        prep = plan.preprocessing or Preprocessing(spec.mean, spec.std)
        manifest["size_rule"] = {"divisible_by": spec.stride}
        manifest["preprocessing"] = {
            "color_order": "RGB",
            "layout": "NCHW",
            "scale": prep.scale,
            "mean": list(prep.mean),
            "std": list(prep.std),
            "formula": "(pixel * scale - mean) / std",
        }
    return manifest


def _weights_record(plan: ExportPlan) -> dict[str, Any] | None:
    """What `reference_model` needs to rebuild the PyTorch model, the checksum included."""
    if plan.imported is not None:
        imported = plan.imported
        return {"path": str(imported.path.resolve()), "sha256": imported.sha256(), "format": imported.format}
    if plan.weights is not None:
        return {"path": str(plan.weights.path.resolve()), "sha256": sha256_file(plan.weights.path)}
    return None
