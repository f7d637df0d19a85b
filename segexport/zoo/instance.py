"""The seed's instance and panoptic parts that deploy as dense networks.

Only the mask head of Mask R-CNN is exported: RPN, RoIAlign and NMS stay with the
detector the user already deploys, which hands this head the pooled RoI features.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from segexport.zoo.backbones import ResNet50


class MaskRCNNMaskHead(nn.Module):
    """Four 3x3 convs, a x2 transposed conv, per-class 1x1 logits; picks each RoI's class.

    Inputs: RoI features [N, 256, 14, 14] and labels [N] (int64). Output: mask logits
    [N, 1, 28, 28] for the labelled class of each RoI.
    """

    def __init__(self, num_classes: int = 81, in_channels: int = 256, mask_dim: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(4):
            layers += [
                nn.Conv2d(in_channels if index == 0 else mask_dim, mask_dim, 3, padding=1),
                nn.ReLU(inplace=True),
            ]
        layers += [
            nn.ConvTranspose2d(mask_dim, mask_dim, 2, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(mask_dim, num_classes, 1),
        ]
        self.mask_head = nn.Sequential(*layers)

    def forward(self, roi_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        masks = self.mask_head(roi_features)
        # The seed indexed `masks[torch.arange(N), labels]`; a gather on the class axis
        # is the same selection and exports as one GatherElements with N dynamic.
        index = labels.reshape(-1, 1, 1, 1).expand(-1, 1, masks.shape[2], masks.shape[3])
        return masks.gather(1, index)


class PanopticFPN(nn.Module):
    """Panoptic FPN's dense part: ResNet-50, FPN P2..P5 and the semantic (stuff) branch.

    Outputs, in this order: semantic logits at input resolution, then P2..P5 for the
    user's instance branch.

    Seed fixes: the backbone was left undefined (ResNet-50 C2..C5 here); the semantic
    logits were upsampled with `scale_factor=4`, which is only right when P2 is exactly
    a quarter of the input; they are resized to the input size now.
    """

    def __init__(self, num_classes: int = 54, fpn_channels: int = 256) -> None:
        super().__init__()
        self.backbone = ResNet50(output_stride=32)
        self.fpn = nn.ModuleDict(
            {
                "lateral": nn.ModuleList([nn.Conv2d(c, fpn_channels, 1) for c in ResNet50.channels]),
                "output": nn.ModuleList(
                    [nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1) for _ in range(4)]
                ),
            }
        )
        self.semantic_head = nn.Sequential(
            nn.Conv2d(fpn_channels, 128, 3, padding=1),
            nn.GroupNorm(32, 128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 128, 3, padding=1),
            nn.GroupNorm(32, 128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, num_classes, 1),
        )

    def _fpn_forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [
            lateral(f) for f, lateral in zip(features, cast(nn.ModuleList, self.fpn["lateral"]), strict=True)
        ]
        for index in range(len(laterals) - 1, 0, -1):
            laterals[index - 1] = laterals[index - 1] + F.interpolate(
                laterals[index], size=laterals[index - 1].shape[2:], mode="nearest"
            )
        return [out(lat) for lat, out in zip(laterals, cast(nn.ModuleList, self.fpn["output"]), strict=True)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        input_size = x.shape[2:]
        pyramid = self._fpn_forward(self.backbone(x))
        target = pyramid[0].shape[2:]
        semantic = pyramid[0]
        for level in pyramid[1:]:
            semantic = semantic + F.interpolate(level, size=target, mode="bilinear", align_corners=False)
        logits = F.interpolate(
            self.semantic_head(semantic), size=input_size, mode="bilinear", align_corners=False
        )
        return (logits, *pyramid)
