"""DeepLabV3+ with ASPP (Chen et al., 2018), as the seed writes it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segexport.zoo.backbones import MobileNetV2, ResNetDeepLabAdapter


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3 branches and image pooling."""

    def __init__(
        self, in_channels: int, out_channels: int = 256, dilations: Sequence[int] = (6, 12, 18)
    ) -> None:
        super().__init__()
        # Seed fix: `dilations` was a mutable list default.
        branches: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )
        ]
        for dilation in dilations:
            branches.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                )
            )
        branches.append(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )
        )
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(out_channels * (len(dilations) + 2), out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [conv(x) for conv in self.convs[:-1]]
        pooled = self.convs[-1](x)
        # Broadcasting the 1x1 pooled map equals the seed's bilinear upsample of a 1x1
        # map, and exports as one Expand instead of a Resize with a computed size.
        features.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(features, dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+: ASPP context on the stride-16 map, a stride-4 decoder for sharp edges."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        low_level_channels: int = 256,
        high_level_channels: int = 2048,
        aspp_out_channels: int = 256,
        aspp_dilations: Sequence[int] = (6, 12, 18),
        decoder_convs: int = 2,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # Seed fix: ASPP's input width was hard-coded to 2048 (ResNet only); it is the
        # backbone's high-level width now, so the MobileNetV2 variant (320) works.
        self.aspp = ASPP(high_level_channels, aspp_out_channels, aspp_dilations)
        self.low_level_conv = nn.Sequential(
            nn.Conv2d(low_level_channels, 48, 1, bias=False),
            nn.BatchNorm2d(48),
            nn.ReLU(inplace=True),
        )
        # The paper refines with two 3x3 convs; `decoder_convs=1` is the one-conv head of
        # popular ports (VainF's DeepLabV3Plus-Pytorch), whose weights then load as trained.
        if decoder_convs < 1:
            raise ValueError(f"decoder_convs must be >= 1, got {decoder_convs}")
        refine: list[nn.Module] = []
        for index in range(decoder_convs):
            in_channels = aspp_out_channels + 48 if index == 0 else 256
            refine += [
                nn.Conv2d(in_channels, 256, 3, padding=1, bias=False),
                nn.BatchNorm2d(256),
                nn.ReLU(inplace=True),
            ]
        self.decoder = nn.Sequential(*refine, nn.Conv2d(256, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_size = x.shape[2:]
        low_level, high_level = self.backbone(x)
        aspp_out = F.interpolate(
            self.aspp(high_level), size=low_level.shape[2:], mode="bilinear", align_corners=False
        )
        x = torch.cat([aspp_out, self.low_level_conv(low_level)], dim=1)
        x = self.decoder(x)
        return F.interpolate(x, size=input_size, mode="bilinear", align_corners=False)


def deeplabv3plus_resnet50(
    num_classes: int, output_stride: int = 16, decoder_convs: int = 2
) -> DeepLabV3Plus:
    dilations = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
    return DeepLabV3Plus(
        ResNetDeepLabAdapter(output_stride),
        num_classes,
        256,
        2048,
        aspp_dilations=dilations,
        decoder_convs=decoder_convs,
    )


def deeplabv3plus_mobilenetv2(num_classes: int, output_stride: int = 16) -> DeepLabV3Plus:
    dilations = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
    backbone = MobileNetV2(output_stride)
    return DeepLabV3Plus(
        backbone,
        num_classes,
        MobileNetV2.low_level_channels,
        MobileNetV2.high_level_channels,
        aspp_dilations=dilations,
    )
