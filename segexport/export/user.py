"""`segexport.export(model, ...)`: a user's `nn.Module` to the same verified artifact as the zoo's.

The module is probed once (`segexport.sources.probe_module`: which output holds the class
scores, their scale, the stride, determinism), wrapped so the graph has one `logits` output,
and handed to the `onnx` stage with a `ModelSpec` made from what the probe and the user said.
The manifest's `source` records all of it, so no later stage asks the zoo.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from segexport.compare import Tolerance
from segexport.errors import SegexportError
from segexport.export.plan import DEFAULT_OPSET, ExportRequest
from segexport.export.stage import export_onnx
from segexport.importers import Preprocessing
from segexport.runtime.preprocessing import DEFAULT_INPUT_FORMAT
from segexport.sources import ScoresAdapter, probe_module
from segexport.sources.factory import state_digest
from segexport.zoo.registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

SIZE_RANGE = ((64, 64), (1024, 1024))  # the default declared range, widened to hold the export size


def _unbuildable(**_options: Any) -> nn.Module:
    raise SegexportError("a user's model is rebuilt from its source record, not by name")


def _class_names(
    model: nn.Module, found: int, classes: Sequence[str] | None, num_classes: int | None
) -> tuple[tuple[str, ...], str]:
    """The class names and where they came from; a count that contradicts the module is refused."""
    if classes is not None:
        names, origin = tuple(str(c) for c in classes), "given"
    elif num_classes is not None:
        names, origin = tuple(f"class_{i}" for i in range(num_classes)), "numbered (none given)"
    else:
        labels = getattr(getattr(model, "config", None), "id2label", None) or {}
        ordered = (
            [labels.get(i, labels.get(str(i))) for i in range(found)] if isinstance(labels, dict) else []
        )
        generic = all(isinstance(n, str) and n == f"LABEL_{i}" for i, n in enumerate(ordered))
        if len(labels) == found and all(isinstance(n, str) for n in ordered) and not generic:
            names, origin = tuple(str(n) for n in ordered), "the model's config (id2label)"
        else:
            names, origin = tuple(f"class_{i}" for i in range(found)), "numbered (none given)"
    if len(names) != found:
        raise SegexportError(f"{len(names)} classes given, but the module's scores have {found} channels")
    return names, origin


def _normalisation(mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple[Preprocessing, bool]:
    """The user's mean/std (0..1 pixel scale), else ImageNet's, marked as assumed."""
    if (mean is None) != (std is None):
        raise SegexportError("give mean and std together (three numbers each, pixels scaled to 0..1)")
    if mean is None or std is None:
        return Preprocessing(IMAGENET_MEAN, IMAGENET_STD), True
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise SegexportError(f"mean and std need three numbers each, std > 0; got {list(mean)}, {list(std)}")
    return Preprocessing(tuple(float(m) for m in mean), tuple(float(s) for s in std)), False  # type: ignore[arg-type]


def export(
    model: nn.Module,
    *,
    size: tuple[int, int],
    classes: Sequence[str] | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    out: str | Path | None = None,
    min_size: tuple[int, int] | None = None,
    max_size: tuple[int, int] | None = None,
    max_batch: int = 16,
    batch: int = 1,
    output: str | int | None = None,
    upsample: str = "bilinear",
    stride: int | None = None,
    opset: int = DEFAULT_OPSET,
    head: str = "logits",
    input_format: str = DEFAULT_INPUT_FORMAT,
    max_rel_l2: float = 1e-4,
    force: bool = False,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export a user's segmentation module; returns the manifest (see docs/your-model.md).

    `output` names the class-score output (a dict key or tuple index) where the probe cannot
    tell; `upsample="bilinear"` resizes lower-resolution scores to the input inside the graph,
    `"none"` keeps them and records the scale (the runtime resizes). `input_format="uint8-nhwc"`
    makes the graph take raw RGB frames and normalise inside. `source` is merged into
    the manifest's record (the CLI adds its factory and weights there).
    """
    say = progress or (lambda _message: None)
    if not isinstance(model, nn.Module):
        raise SegexportError(f"expected a torch.nn.Module, got {type(model).__name__}")
    say(f"probing {type(model).__name__} at 1x3x{size[0]}x{size[1]}")
    probe = probe_module(model, size, output, upsample, stride)
    names, origin = _class_names(model, probe.num_classes, classes, num_classes)
    prep, assumed = _normalisation(mean, std)
    choice = probe.choice
    say(
        f"      scores: {choice.selector} ({probe.num_classes} classes, 1/{choice.scale} resolution"
        f"{', upsampled in the graph' if choice.scale > 1 and choice.upsample == 'bilinear' else ''}); "
        f"stride {probe.stride}; classes {origin}"
    )
    if assumed:
        say("      mean/std not given: ImageNet's assumed (recorded as assumed); pass mean=, std= if not")
    qualified = f"{type(model).__module__}.{type(model).__qualname__}"
    spec = ModelSpec(
        f"python:{type(model).__name__}",
        _unbuildable,
        "python",
        f"{qualified} (a user's module)",
        probe.num_classes,
        ("logits",),
        default_size=size,
        stride=probe.stride,
        min_size=tuple(min(a, b) for a, b in zip(SIZE_RANGE[0], size, strict=True)),  # type: ignore[arg-type]
        max_size=tuple(max(a, b) for a, b in zip(SIZE_RANGE[1], size, strict=True)),  # type: ignore[arg-type]
        max_batch=max_batch,
        mean=prep.mean,
        std=prep.std,
        logits_outputs=("logits",),
    )
    record = {
        "kind": "python",
        "class": qualified,
        "probe": probe.record(),
        "classes_from": origin,
        "normalisation_assumed": assumed,
        "state_sha256": state_digest(model),
        **(source or {}),
    }
    request = ExportRequest(
        None,
        num_classes=probe.num_classes,
        size=size,
        batch=batch,
        min_size=min_size,
        max_size=max_size,
        max_batch=max_batch,
        opset=opset,
        out_dir=Path(out) if out is not None else None,
        force=force,
        tolerance=Tolerance(max_rel_l2=max_rel_l2),
        threads=threads,
        head=head,
        input_format=input_format,
        spec=spec,
        module=ScoresAdapter(model, choice).eval(),
        source=record,
        class_names=names,
        preprocessing=prep,
    )
    manifest = export_onnx(request, progress=say)
    return manifest
