"""A user's module as one class-score tensor, and the probe that learns how to get it.

A segmentation network returns a tensor, a tuple (main head first, aux heads after), a dict
(torchvision's `{"out", "aux"}`) or a Hugging Face `ModelOutput` (`.logits`), sometimes at a
fraction of the input resolution (SegFormer, UperNet: 1/4). `probe_module` runs the module
and decides, once, which output holds the class scores, at which scale, and which input
sizes it takes (the stride); `ScoresAdapter` applies that decision inside the traced graph.
Every refusal is one line saying what the module did and what to pass instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segexport.errors import SegexportError

UPSAMPLE_POLICIES = ("bilinear", "none")
# Strides tried, smallest first: the smallest one whose sizes all work is the rule.
STRIDES = (1, 2, 4, 8, 16, 32, 64)
PREFERRED_KEYS = ("logits", "out")  # Hugging Face, torchvision


@dataclass(frozen=True)
class OutputChoice:
    """Which output holds the class scores (`tensor`, `index:N`, `key:NAME`), their scale
    (input side / output side) and what happens to a lower resolution (`bilinear` in the
    graph, or `none`: the runtime resizes)."""

    selector: str = "tensor"
    scale: int = 1
    upsample: str = "bilinear"

    def record(self) -> dict[str, Any]:
        return {"selector": self.selector, "scale": self.scale, "upsample": self.upsample}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> OutputChoice:
        return cls(str(record["selector"]), int(record["scale"]), str(record["upsample"]))

    @property
    def graph_scale(self) -> int:
        """The scale of the graph's output: 1 once upsampled in the graph."""
        return 1 if self.upsample == "bilinear" else self.scale


def select(result: Any, selector: str) -> torch.Tensor:
    """The output `selector` names in a module's return value."""
    kind, _, name = selector.partition(":")
    if kind == "index":
        value = result[int(name)]
    elif kind == "key":
        value = result[name]
    else:
        value = result
    if not isinstance(value, torch.Tensor):
        raise SegexportError(f"output {selector} is a {type(value).__name__}, not a tensor")
    return value


class ScoresAdapter(nn.Module):
    """The user's module with one output: class scores [B, K, H/s, W/s] (s = 1 when upsampled)."""

    def __init__(self, model: nn.Module, choice: OutputChoice) -> None:
        super().__init__()
        self.model = model
        self.choice = choice

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        scores = select(self.model(image), self.choice.selector)
        if self.choice.scale != 1 and self.choice.upsample == "bilinear":
            scores = F.interpolate(scores, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return scores


@dataclass(frozen=True)
class Probe:
    """What running the module taught: its class count, output choice and size rule."""

    num_classes: int
    choice: OutputChoice
    stride: int
    candidates: tuple[str, ...]  # every output seen, `selector [shape]`
    stride_from: str = "probe"  # or "given"; the export then checks it on the ONNX

    def record(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "stride": self.stride,
            "stride_from": self.stride_from,
            "output": self.choice.record(),
            "outputs_seen": list(self.candidates),
        }


def _candidates(result: Any) -> list[tuple[str, torch.Tensor]]:
    """Every top-level tensor of a return value, with the selector that reaches it."""
    if isinstance(result, torch.Tensor):
        return [("tensor", result)]
    if isinstance(result, Mapping):  # dicts and Hugging Face ModelOutput alike
        return [(f"key:{k}", v) for k, v in result.items() if isinstance(v, torch.Tensor)]
    if isinstance(result, (tuple, list)):
        return [(f"index:{i}", v) for i, v in enumerate(result) if isinstance(v, torch.Tensor)]
    logits = getattr(result, "logits", None)
    return [("key:logits", logits)] if isinstance(logits, torch.Tensor) else []


def _describe(candidates: list[tuple[str, torch.Tensor]]) -> tuple[str, ...]:
    return tuple(f"{s} {list(t.shape)}" for s, t in candidates)


def _selector_for(output: str | int, candidates: list[tuple[str, torch.Tensor]]) -> str:
    wanted = {f"key:{output}", f"index:{output}"}
    found = [s for s, _ in candidates if s in wanted]
    if not found:
        raise SegexportError(
            f"output {output!r} is not among the module's outputs ({', '.join(_describe(candidates))})"
        )
    return found[0]


def _choose(candidates: list[tuple[str, torch.Tensor]], output: str | int | None) -> str:
    """The class-score output: the one named, else the only/preferred 4-D float tensor."""
    if output is not None:
        return _selector_for(output, candidates)
    maps = [(s, t) for s, t in candidates if t.dim() == 4 and t.is_floating_point()]
    if not maps:
        seen = ", ".join(_describe(candidates)) or "no tensor"
        raise SegexportError(f"no output has a class axis [B, K, H, W] (the module returned {seen})")
    if len(maps) == 1 or maps[0][0].startswith("index:") or maps[0][0] == "tensor":
        return maps[0][0]  # a tuple: the main head comes first, aux heads after
    for key in PREFERRED_KEYS:
        if any(s == f"key:{key}" for s, _ in maps):
            return f"key:{key}"
    names = ", ".join(_describe(maps))
    raise SegexportError(f"several outputs could hold the class scores ({names}); name one with --output-key")


def _scale(scores: torch.Tensor, height: int, width: int) -> int:
    out_h, out_w = scores.shape[-2:]
    if height % out_h or width % out_w or height // out_h != width // out_w:
        raise SegexportError(
            f"the class scores are {out_h}x{out_w} for a {height}x{width} input: not the input size "
            "divided by one integer; export at a size the model divides evenly"
        )
    return height // out_h


def _run(model: nn.Module, height: int, width: int) -> Any:
    image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            return model(image)
    except Exception as error:  # the user's code: any exception means "cannot take this size"
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        raise SegexportError(
            f"the module's forward failed at 1x3x{height}x{width}: "
            f"{type(error).__name__}: {lines[-1] if lines else ''}"
        ) from None


def _deterministic(model: nn.Module, first: torch.Tensor, height: int, width: int, selector: str) -> None:
    again = select(_run(model, height, width), selector)
    if not torch.equal(first, again):
        difference = float((first - again).abs().max())
        raise SegexportError(
            f"the module is not deterministic in eval mode (two runs differ by up to {difference:.3g}): "
            "dropout or noise left on in forward? a verified export needs the same output every run"
        )


def probe_module(
    model: nn.Module,
    size: tuple[int, int],
    output: str | int | None = None,
    upsample: str = "bilinear",
    stride: int | None = None,
) -> Probe:
    """Run `model` (in eval mode) and learn its output contract and size rule."""
    if not isinstance(model, nn.Module):
        raise SegexportError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if upsample not in UPSAMPLE_POLICIES:
        raise SegexportError(f"upsample must be one of {', '.join(UPSAMPLE_POLICIES)}, got {upsample!r}")
    model.eval()
    height, width = size
    candidates = _candidates(_run(model, height, width))
    selector = _choose(candidates, output)
    scores = dict(candidates)[selector]
    if scores.dim() != 4 or not scores.is_floating_point():
        raise SegexportError(
            f"output {selector} is {list(scores.shape)}: expected float class scores [B, K, H, W]"
        )
    scale = _scale(scores, height, width)
    _deterministic(model, scores, height, width, selector)
    choice = OutputChoice(selector, scale, upsample if scale > 1 else "bilinear")
    found = _probe_stride(model, choice, size) if stride is None else stride
    if height % found or width % found:
        raise SegexportError(f"size {height}x{width} is not a multiple of the stride {found}")
    origin = "probe" if stride is None else "given"
    return Probe(int(scores.shape[1]), choice, found, _describe(candidates), origin)


def _probe_stride(model: nn.Module, choice: OutputChoice, size: tuple[int, int]) -> int:
    """The smallest stride s whose odd multiples near `size` run and give scores of size input/scale."""
    for stride in STRIDES:
        if stride % choice.scale or size[0] % stride or size[1] % stride:
            continue
        height, width = (stride * (2 * max(1, round(side / stride / 2)) + 1) for side in size)
        try:
            scores = select(_run(model, height, width), choice.selector)
        except SegexportError:
            continue
        if tuple(scores.shape[-2:]) == (height // choice.scale, width // choice.scale):
            return stride
    raise SegexportError(
        f"no stride up to {STRIDES[-1]} that divides {size[0]}x{size[1]} gives class scores of the "
        "input's size at other sizes; pass stride= (--stride) if the model has a rule of its own"
    )
