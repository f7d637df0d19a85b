"""FCN-32s and FCN-8s on VGG16 (Long et al., 2015), as the seed writes them.

`fc_channels` defaults to the paper's 4096; tests use a narrow value because fc6
alone holds 102M parameters at 4096.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segexport.zoo.backbones import vgg_block

_VGG16_STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))


class FCN(nn.Module):
    """FCN-32s: VGG16 features, fully convolutional fc6/fc7, one x32 learned upsampling."""

    def __init__(self, num_classes: int, fc_channels: int = 4096) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        for in_c, out_c, convs in _VGG16_STAGES:
            stages += [vgg_block(in_c, out_c, convs), nn.MaxPool2d(2, 2)]
        self.features = nn.Sequential(*stages)
        self.fc6 = nn.Conv2d(512, fc_channels, 7, padding=3)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.score = nn.Conv2d(fc_channels, num_classes, 1)
        # kernel 64, stride 32, padding 16: exactly 32x the stride-32 map, so the seed's
        # trailing interpolate is a no-op on sizes divisible by 32 (the zoo's size rule).
        self.upsample = nn.ConvTranspose2d(num_classes, num_classes, 64, stride=32, padding=16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_size = x.shape[2:]
        x = self.features(x)
        x = F.relu(self.fc6(x))
        x = F.relu(self.fc7(x))
        x = self.upsample(self.score(x))
        return F.interpolate(x, size=input_size, mode="bilinear", align_corners=False)


class FCN8s(nn.Module):
    """FCN-8s: fuses pool3/pool4 scores with the fc7 score for sharper boundaries."""

    def __init__(self, num_classes: int, fc_channels: int = 4096) -> None:
        super().__init__()
        (c1, c2, c3, c4, c5) = (vgg_block(*stage) for stage in _VGG16_STAGES)
        self.conv1, self.conv2, self.conv3, self.conv4, self.conv5 = c1, c2, c3, c4, c5
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.MaxPool2d(2, 2)
        self.pool5 = nn.MaxPool2d(2, 2)
        self.fc6 = nn.Conv2d(512, fc_channels, 7, padding=3)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        self.score_pool4 = nn.Conv2d(512, num_classes, 1)
        self.score_pool3 = nn.Conv2d(256, num_classes, 1)
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, padding=1)
        self.upscore4 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, padding=1)
        self.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_size = x.shape[2:]
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        pool3 = self.pool3(self.conv3(x))
        pool4 = self.pool4(self.conv4(pool3))
        pool5 = self.pool5(self.conv5(pool4))
        x = F.relu(self.fc6(pool5))
        x = F.relu(self.fc7(x))
        fuse_pool4 = self.upscore2(self.score_fr(x)) + self.score_pool4(pool4)
        fuse_pool3 = self.upscore4(fuse_pool4) + self.score_pool3(pool3)
        out = self.upscore8(fuse_pool3)
        return F.interpolate(out, size=input_size, mode="bilinear", align_corners=False)
