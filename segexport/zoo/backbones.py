"""Backbones the seed's models assume but do not define.

Written here rather than taken from torchvision, which does not import beside the CPU
torch build these machines use. Module names follow torchvision's, so users can load
ImageNet weights they converted from torchvision into a state_dict.
"""

from __future__ import annotations

import torch
from torch import nn


def vgg_block(in_channels: int, out_channels: int, num_convs: int) -> nn.Sequential:
    """The seed's `_make_block`: `num_convs` 3x3 convs with ReLU (shared by FCN and FCN-8s)."""
    layers: list[nn.Module] = []
    for index in range(num_convs):
        layers += [
            nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 returning C2..C5 (strides 4, 8, 16, 32 unless dilated).

    `output_stride=16` replaces the stride of the last stage by dilation 2, as
    DeepLabV3+ does; 8 also dilates stage 3.
    """

    channels = (256, 512, 1024, 2048)

    def __init__(self, output_stride: int = 32) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        dilate_stage3 = output_stride == 8
        dilate_stage4 = output_stride in (8, 16)
        self.layer1 = self._stage(64, 64, 3, stride=1, dilation=1)
        self.layer2 = self._stage(256, 128, 4, stride=2, dilation=1)
        self.layer3 = self._stage(
            512, 256, 6, stride=1 if dilate_stage3 else 2, dilation=2 if dilate_stage3 else 1
        )
        stage4_dilation = (4 if dilate_stage3 else 2) if dilate_stage4 else 1
        self.layer4 = self._stage(1024, 512, 3, stride=1 if dilate_stage4 else 2, dilation=stage4_dilation)

    @staticmethod
    def _stage(in_channels: int, width: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        # The first block keeps the previous dilation for its stride-carrying conv,
        # as torchvision does; with dilation 1 that is plain stride.
        first_dilation = max(1, dilation // 2)
        layers = [Bottleneck(in_channels, width, stride, first_dilation)]
        layers += [Bottleneck(width * 4, width, 1, dilation) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def _conv_bn_relu6(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1, dilation: int = 1
) -> nn.Sequential:
    padding = (kernel - 1) // 2 * dilation
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expand_ratio: int, dilation: int = 1
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden, dilation=dilation),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) for DeepLabV3+ on edge devices.

    Returns the stride-4 features (24 channels, DeepLabV3+'s low level) and the last
    inverted-residual output (320 channels); the final 1280-channel 1x1 conv of the
    classifier is left out, as in common DeepLabV3+ MobileNetV2 ports.
    """

    low_level_channels = 24
    high_level_channels = 320

    # (expand ratio, channels, repeats, stride) from the MobileNetV2 paper, table 2.
    _SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, stride=2)]
        current_stride, dilation, in_channels = 2, 1, 32
        for expand, channels, repeats, stride in self._SETTINGS:
            for index in range(repeats):
                block_stride = stride if index == 0 else 1
                block_dilation = dilation
                if block_stride == 2 and current_stride >= output_stride:
                    # Past the target stride: dilate instead of striding.
                    dilation *= 2
                    block_stride = 1
                elif block_stride == 2:
                    current_stride *= 2
                layers.append(InvertedResidual(in_channels, channels, block_stride, expand, block_dilation))
                in_channels = channels
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        low = self.features[:4](x)
        high = self.features[4:](low)
        return [low, high]


class ResNetDeepLabAdapter(nn.Module):
    """Gives DeepLabV3+ the (low-level C2, high-level C5) pair the seed's forward expects."""

    low_level_channels = 256
    high_level_channels = 2048

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        self.body = ResNet50(output_stride)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c2, _, _, c5 = self.body(x)
        return [c2, c5]
