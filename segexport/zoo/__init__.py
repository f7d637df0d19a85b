"""The model zoo: `create_model(name, num_classes=..., **kwargs)` and `list_models()`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from segexport.zoo.deeplab import deeplabv3plus_mobilenetv2, deeplabv3plus_resnet50
from segexport.zoo.fcn import FCN, FCN8s
from segexport.zoo.instance import MaskRCNNMaskHead, PanopticFPN
from segexport.zoo.registry import ModelSpec, create_model, get_spec, list_models, register
from segexport.zoo.segformer import SEGFORMER_VARIANTS, SegFormer
from segexport.zoo.setr import SETR
from segexport.zoo.unet import AttentionUNet, UNet

__all__ = ["ModelSpec", "count_parameters", "create_model", "get_spec", "list_models"]


def _semantic(
    name: str, build: Callable[..., nn.Module], family: str, description: str, num_classes: int, **extra: Any
) -> None:
    """Register a model with one `logits` output [B, K, H, W] at input resolution."""
    register(
        ModelSpec(
            name, build, family, description, num_classes, ("logits",), logits_outputs=("logits",), **extra
        )
    )


_UNET = {"stride": 16, "min_size": (32, 32)}

_semantic("fcn", FCN, "fcn", "FCN-32s on VGG16 (Long et al., 2015)", 21, aliases=("fcn32s", "fcn-32s"))
_semantic("fcn8s", FCN8s, "fcn", "FCN-8s on VGG16, pool3/pool4 skip fusion", 21, aliases=("fcn-8s",))
_semantic("unet", UNet, "unet", "U-Net, widths 64..1024", 2, **_UNET)
_semantic(
    "unet-small",
    partial(UNet, features=(16, 32, 64, 128, 256)),
    "unet",
    "U-Net, widths 16..256 (edge and demo size)",
    2,
    **_UNET,
)
_semantic(
    "attention-unet",
    AttentionUNet,
    "unet",
    "Attention U-Net (Oktay et al., 2018)",
    2,
    aliases=("attunet", "attention_unet"),
    **_UNET,
)
_semantic(
    "deeplabv3plus",
    deeplabv3plus_resnet50,
    "deeplab",
    "DeepLabV3+ ResNet-50, output stride 16",
    21,
    stride=16,
    aliases=("deeplabv3+", "deeplabv3plus-resnet50"),
)
_semantic(
    "deeplabv3plus-mobilenetv2",
    deeplabv3plus_mobilenetv2,
    "deeplab",
    "DeepLabV3+ MobileNetV2, output stride 16 (edge)",
    21,
    stride=16,
    aliases=("deeplabv3+-mobilenetv2", "deeplabv3plus-mbv2"),
)
_semantic(
    "setr",
    SETR,
    "transformer",
    "SETR-PUP, ViT-B/16 encoder (Zheng et al., 2021)",
    21,
    stride=16,
    aliases=("setr-pup",),
)
for _variant in SEGFORMER_VARIANTS:
    _semantic(
        f"segformer-{_variant}",
        partial(SegFormer, variant=_variant),
        "transformer",
        f"SegFormer-{_variant.upper()} (Xie et al., 2021), logits at input resolution",
        150,
        aliases=("segformer",) if _variant == "b0" else (),
    )
register(
    ModelSpec(
        "maskrcnn-mask-head",
        MaskRCNNMaskHead,
        "instance",
        "Mask R-CNN mask head: RoI features [N,256,14,14] + labels [N] -> masks [N,1,28,28]",
        81,
        ("mask_logits",),
        input_kind="roi",
        max_batch=256,
        aliases=("mask-head",),
        logits_outputs=("mask_logits",),
    )
)
register(
    ModelSpec(
        "panoptic-fpn",
        PanopticFPN,
        "panoptic",
        "Panoptic FPN: ResNet-50 + FPN + semantic branch (Kirillov et al., 2019)",
        54,
        ("semantic_logits", "fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5"),
        logits_outputs=("semantic_logits",),
    )
)


def count_parameters(name: str, num_classes: int | None = None, **kwargs: object) -> int:
    """Parameter count without allocating weights (built on the meta device)."""
    import torch

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **kwargs)
    return sum(p.numel() for p in model.parameters())
