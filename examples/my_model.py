"""Your own network through segexport: the seed's DeepLabV3+ head on a backbone you wrote.

    segexport onnx --model examples/my_model.py:build --size 256x256 --out artifacts/my-model

`build` is the factory segexport calls (with `--model-arg KEY=VALUE` as keyword arguments);
it returns an `nn.Module` taking a float image [B, 3, H, W] and returning class scores
[B, K, H, W]. Importing this file runs it, as `python examples/my_model.py` would.
"""

from __future__ import annotations

import torch
from torch import nn

from segexport.zoo.deeplab import DeepLabV3Plus


def _block(inputs: int, outputs: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """Four strided stages; returns the stride-4 features (for the decoder) and the deepest."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(_block(3, width, 2), _block(width, width, 2))  # 1/4
        self.deep = nn.Sequential(_block(width, 2 * width, 2), _block(2 * width, 4 * width, 2))  # 1/16
        self.low_channels, self.high_channels = width, 4 * width

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.stem(image)
        return low, self.deep(low)


def build(num_classes: int = 5, width: int = 16) -> nn.Module:
    """The factory: DeepLabV3+ (ASPP + decoder) over `TinyBackbone`, randomly initialised."""
    torch.manual_seed(0)  # the same weights every call, so later stages can rebuild the reference
    backbone = TinyBackbone(width)
    return DeepLabV3Plus(
        backbone, num_classes, backbone.low_channels, backbone.high_channels, aspp_out_channels=64
    ).eval()
