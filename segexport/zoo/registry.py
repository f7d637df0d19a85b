"""A timm-style model registry: every architecture is reachable by name, variants included.

Each entry carries what the later stages need to know about the model without running
it: its inputs and outputs, the size rule of the architecture (output stride), sensible
dynamic ranges, and the normalisation the runtime must apply.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from segexport.errors import SegexportError
from segexport.runtime.preprocessing import DEFAULT_INPUT_FORMAT, graph_normalises
from segexport.shapes import DynamicRange, InputShape

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What segexport knows about one named model."""

    name: str
    build: Callable[..., nn.Module]
    family: str
    description: str
    default_num_classes: int
    output_names: tuple[str, ...]
    input_kind: Literal["image", "roi"] = "image"
    default_size: tuple[int, int] = (512, 512)
    stride: int = 32
    min_size: tuple[int, int] = (64, 64)
    max_size: tuple[int, int] = (1024, 1024)
    max_batch: int = 16
    aliases: tuple[str, ...] = ()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Outputs whose channel axis holds one score per class (argmax gives the label map).
    logits_outputs: tuple[str, ...] = field(default=())
    # What the artifact's image input takes (segexport.runtime.preprocessing.INPUT_FORMATS): the
    # network itself always reads float NCHW; `uint8-nhwc` artifacts normalise raw frames in-graph.
    input_format: str = DEFAULT_INPUT_FORMAT

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("image",) if self.input_kind == "image" else ("roi_features", "labels")

    @property
    def batch_axis(self) -> str:
        return "batch" if self.input_kind == "image" else "num_rois"

    def default_range(self) -> DynamicRange:
        if self.input_kind == "roi":
            return DynamicRange(1, self.max_batch)
        return DynamicRange(1, self.max_batch, self.min_size, self.max_size)

    def check_size(self, height: int, width: int) -> None:
        """Refuse sizes the architecture cannot take, stating the rule."""
        if self.input_kind != "image":
            return
        if height % self.stride or width % self.stride:
            raise SegexportError(
                f"{self.name} needs height and width divisible by its output stride "
                f"{self.stride}; got {height}x{width} (nearest valid: "
                f"{_round_to(height, self.stride)}x{_round_to(width, self.stride)})"
            )
        if height < self.stride or width < self.stride:
            raise SegexportError(f"{self.name} needs height and width >= {self.stride}")

    def example_inputs(
        self, shape: InputShape, num_classes: int, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Random inputs of one concrete shape, named as the exported graph names them."""
        if self.input_kind == "image":
            assert shape.height is not None and shape.width is not None
            if graph_normalises(self.input_format):  # raw frames: every grey level equally likely
                size = (shape.batch, shape.height, shape.width, 3)
                return {"image": torch.randint(0, 256, size, generator=generator, dtype=torch.uint8)}
            image = torch.randn(shape.batch, 3, shape.height, shape.width, generator=generator)
            return {"image": image}
        features = torch.randn(shape.batch, 256, 14, 14, generator=generator)
        labels = torch.randint(0, num_classes, (shape.batch,), generator=generator)
        return {"roi_features": features, "labels": labels}


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: ModelSpec) -> ModelSpec:
    for key in (spec.name, *spec.aliases):
        if key in _REGISTRY or key in _ALIASES:
            raise ValueError(f"model name {key!r} registered twice")
    _REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name or alias; unknown names get close suggestions."""
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in _REGISTRY:
        return _REGISTRY[key]
    known = sorted([*_REGISTRY, *_ALIASES])
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise SegexportError(f"unknown model {name!r}{hint} (`segexport zoo` lists all {len(_REGISTRY)})")


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int | None = None, **kwargs: object) -> nn.Module:
    """Build a model by name, in eval mode, with randomly initialised weights."""
    spec = get_spec(name)
    classes = spec.default_num_classes if num_classes is None else num_classes
    if classes < 1:
        raise SegexportError(f"num_classes must be >= 1, got {classes}")
    try:
        model = spec.build(num_classes=classes, **kwargs)
    except TypeError as error:
        raise SegexportError(f"{spec.name}: bad model option: {error}") from error
    return model.eval()
