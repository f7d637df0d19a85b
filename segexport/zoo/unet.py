"""U-Net and Attention U-Net, as the seed writes them (state_dict keys included)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

UNET_FEATURES = (64, 128, 256, 512, 1024)


class DoubleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bias: bool = False) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class UNet(nn.Module):
    """U-Net (Ronneberger et al., 2015) with padded convs, so output size = input size.

    `conv_bias=True` gives the 3x3 convs biases before their BatchNorm, as some ports
    (milesial's Pytorch-UNet) have, so their weights load without folding.
    """

    # Seed fix: `features` was a mutable list default shared by every instance; a tuple now.
    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 3,
        features: Sequence[int] = UNET_FEATURES,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        features = tuple(features)
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.pool = nn.MaxPool2d(2, 2)
        for feature in features:
            self.encoder.append(DoubleConv(in_channels, feature, conv_bias))
            in_channels = feature
        for feature in reversed(features[:-1]):
            self.decoder.append(nn.ConvTranspose2d(feature * 2, feature, 2, stride=2))
            self.decoder.append(DoubleConv(feature * 2, feature, conv_bias))
        self.final_conv = nn.Conv2d(features[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder_block in self.encoder[:-1]:
            x = encoder_block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.encoder[-1](x)
        for index in range(0, len(self.decoder), 2):
            x = self.decoder[index](x)
            skip = skips[-1 - index // 2]
            # Seed fix: compared full shapes; only the spatial size can differ (odd sizes).
            if x.shape[2:] != skip.shape[2:]:
                x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
            x = self.decoder[index + 1](torch.cat([skip, x], dim=1))
        return self.final_conv(x)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al., 2018): weights skip features by relevance."""

    def __init__(self, g_channels: int, x_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.W_g = nn.Conv2d(g_channels, inter_channels, 1, bias=False)
        self.W_x = nn.Conv2d(x_channels, inter_channels, 1, bias=False)
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1, bias=False), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        g1 = self.W_g(g)
        x1 = self.W_x(x)
        if g1.shape[2:] != x1.shape[2:]:
            g1 = F.interpolate(g1, size=x1.shape[2:], mode="bilinear", align_corners=False)
        return x * self.psi(self.relu(g1 + x1))


class AttentionUNet(nn.Module):
    def __init__(
        self, num_classes: int = 2, in_channels: int = 3, features: Sequence[int] = UNET_FEATURES
    ) -> None:
        super().__init__()
        f = tuple(features)
        if len(f) != 5:
            raise ValueError(f"AttentionUNet takes 5 feature widths, got {len(f)}")
        self.encoder = nn.ModuleList(
            [DoubleConv(in_channels, f[0])] + [DoubleConv(f[i], f[i + 1]) for i in range(4)]
        )
        self.pool = nn.MaxPool2d(2, 2)
        self.upconv4 = nn.ConvTranspose2d(f[4], f[3], 2, stride=2)
        self.attn4 = AttentionGate(f[3], f[3], f[3] // 2)
        self.decoder4 = DoubleConv(f[4], f[3])
        self.upconv3 = nn.ConvTranspose2d(f[3], f[2], 2, stride=2)
        self.attn3 = AttentionGate(f[2], f[2], f[2] // 2)
        self.decoder3 = DoubleConv(f[3], f[2])
        self.upconv2 = nn.ConvTranspose2d(f[2], f[1], 2, stride=2)
        self.attn2 = AttentionGate(f[1], f[1], f[1] // 2)
        self.decoder2 = DoubleConv(f[2], f[1])
        self.upconv1 = nn.ConvTranspose2d(f[1], f[0], 2, stride=2)
        self.attn1 = AttentionGate(f[0], f[0], f[0] // 2)
        self.decoder1 = DoubleConv(f[1], f[0])
        self.final = nn.Conv2d(f[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.encoder[0](x)
        e2 = self.encoder[1](self.pool(e1))
        e3 = self.encoder[2](self.pool(e2))
        e4 = self.encoder[3](self.pool(e3))
        d = self.encoder[4](self.pool(e4))
        stages = (
            (self.upconv4, self.attn4, self.decoder4, e4),
            (self.upconv3, self.attn3, self.decoder3, e3),
            (self.upconv2, self.attn2, self.decoder2, e2),
            (self.upconv1, self.attn1, self.decoder1, e1),
        )
        for upconv, gate, decoder, skip in stages:
            d = upconv(d)
            d = decoder(torch.cat([gate(d, skip), d], dim=1))
        return self.final(d)
