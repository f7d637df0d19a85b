"""SETR-PUP (Zheng et al., 2021): a ViT encoder and a progressive-upsampling decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segexport.zoo.transformer import ViTBlock, tokens_to_map


def _pup_stage(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
    ]


class SETR(nn.Module):
    """SETR with the seed's ViT-B/16-sized encoder (768 wide, 12 layers, 12 heads).

    Seed fixes:
    - the position embedding was added as-is, so any input other than `img_size`
      failed; it is now resized (bicubic, as ViT fine-tuning does) to the patch grid
      of each input, which keeps the export dynamic in height and width;
    - the token map was reshaped to a square `sqrt(num_patches)` grid; it uses the
      real H/16 x W/16 grid now, so non-square inputs work;
    - `nn.TransformerEncoderLayer` (post-norm, ReLU) replaced by the pre-norm GELU
      ViT block the paper's encoder uses, with a final LayerNorm.
    """

    def __init__(
        self,
        num_classes: int = 21,
        img_size: int = 512,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_channels: int = 256,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList([ViTBlock(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        upsamplings = max(1, patch_size.bit_length() - 1)  # log2(patch): 4 for 16
        layers: list[nn.Module] = _pup_stage(embed_dim, decoder_channels, 1)
        for _ in range(upsamplings - 1):
            layers += _pup_stage(decoder_channels, decoder_channels, 3)
        layers.append(nn.Conv2d(decoder_channels, num_classes, 1))
        self.decoder = nn.Sequential(*layers)

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        grid = self.pos_embed.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        height, width = x.shape[2], x.shape[3]
        x = x.flatten(2).transpose(1, 2) + self.position_embedding(height, width)
        for block in self.blocks:
            x = block(x)
        x = tokens_to_map(self.norm(x), height, width)
        return self.decoder(x)
