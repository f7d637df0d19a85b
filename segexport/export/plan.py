"""Planning an export: the request, its defaults, and the sizes and caps it must respect.

`plan_export` turns an `ExportRequest` into an `ExportPlan` and refuses, before anything is
traced, what the artifact could not honour: opsets, heads, sizes off the model's stride,
shapes outside the declared range, and (without --allow-large) sizes that would exhaust memory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segexport.compare import Tolerance
from segexport.errors import SegexportError
from segexport.export.graph import HEADS, MASK_TYPES
from segexport.importers import EXPECTED, Imported, Preprocessing, import_weights
from segexport.runtime.preprocessing import DEFAULT_INPUT_FORMAT, INPUT_FORMATS
from segexport.shapes import DynamicRange, InputShape
from segexport.weights import Weights, resolve_weights
from segexport.zoo.registry import ModelSpec, get_spec

DEFAULT_OPSET = 18
# 17: first with LayerNormalization. TensorRT's own range differs per release (10.1-GA's operator
# list: 9..20; 10.16 and 11.1: 9..24): `segexport check-trt` reports an opset beyond a target's range.
SUPPORTED_OPSETS = range(17, 22)
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
    # A model from outside the zoo (`segexport.export(module)`): its spec, the module to trace,
    # the manifest's `source` record, and the classes/normalisation the user gave.
    spec: ModelSpec | None = None
    module: Any = None
    source: dict[str, Any] | None = None
    class_names: tuple[str, ...] | None = None
    preprocessing: Preprocessing | None = None
    # What the artifact's image input takes (segexport.runtime.preprocessing.INPUT_FORMATS):
    # `uint8-nhwc` prefixes the verified graph with the normalisation, for raw RGB frames.
    input_format: str = DEFAULT_INPUT_FORMAT


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
    module: Any = None  # a user's module, traced as is (no zoo build)
    source: dict[str, Any] | None = None


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
    imported = _imported(request) if request.spec is None else None
    spec = request.spec or get_spec(imported.model if imported else request.model or DEFAULT_MODEL)
    weights = None
    if request.weights is not None and imported is None and request.spec is None:
        weights = resolve_weights(spec.name, request.weights)
    trained_names = list(request.class_names) if request.class_names else None
    if weights:
        trained_names = weights.class_names
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
    check_input_format(spec, request.input_format)
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
        size = (
            request.size
            or (imported.size if imported else None)
            or trained_size(weights)
            or spec.default_size
        )
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
    out_dir = request.out_dir or Path("artifacts") / spec.name.replace(":", "-").lower()
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
        imported.preprocessing if imported else request.preprocessing,
        request.module,
        request.source,
    )


def trained_size(weights: Weights | None) -> tuple[int, int] | None:
    """The size the checkpoint was trained at, when it records one (`train` does)."""
    size = ((weights.record if weights else None) or {}).get("input_size")
    return (int(size[0]), int(size[1])) if size else None


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


def check_input_format(spec: ModelSpec, input_format: str) -> None:
    """Refuse an input format the tool does not know, or raw frames for a model without images."""
    if input_format not in INPUT_FORMATS:
        raise SegexportError(
            f"--input-format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}"
        )
    if input_format != DEFAULT_INPUT_FORMAT and spec.input_kind != "image":
        raise SegexportError(f"--input-format {input_format}: {spec.name} takes RoI features, not images")
