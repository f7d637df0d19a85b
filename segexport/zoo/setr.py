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

    For ViT weights from elsewhere (timm, mmseg's SETR): `class_token=True` keeps their
    class token in every attention layer (dropped before the decoder), `img_size` set to
    the checkpoint's own grid keeps its position table as trained, and
    `pos_embed_antialias=True` resizes that table as timm does (bicubic, antialiased).
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
        class_token: bool = False,
        pos_embed_antialias: bool = False,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.prefix_tokens = 1 if class_token else 0
        self.pos_embed_antialias = pos_embed_antialias
        self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.cls_token: nn.Parameter | None = None
        if class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.prefix_tokens + self.grid * self.grid, embed_dim))
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
        """The stored table at the input's patch grid, class-token entry first when there is one."""
        table = self.pos_embed[:, self.prefix_tokens :]
        grid = table.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        if self.pos_embed_antialias:
            rows = antialiased_bicubic_matrix(self.grid, height, grid.dtype)
            cols = antialiased_bicubic_matrix(self.grid, width, grid.dtype)
            grid = rows @ grid @ cols.transpose(0, 1)
        else:
            grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return torch.cat([self.pos_embed[:, : self.prefix_tokens], grid.flatten(2).transpose(1, 2)], dim=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Normalised encoder tokens (class token first, when on) and the patch grid."""
        x = self.patch_embed(x)
        height, width = x.shape[2], x.shape[3]
        x = x.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.position_embedding(height, width)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, height, width = self.encode(x)
        return self.decoder(tokens_to_map(tokens[:, self.prefix_tokens :], height, width))


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel; a = -0.5 is what antialiased resizing (PIL, torch) uses."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def antialiased_bicubic_matrix(in_size: int, out_size: int, dtype: torch.dtype) -> torch.Tensor:
    """[out, in] weights of `F.interpolate(mode="bicubic", antialias=True)` along one axis.

    Written as a matrix because ONNX Runtime's antialiased Resize does not compute what
    torch does (checked: rel L2 ~1.4 on a 14 -> 20 grid); two MatMuls export exactly.
    """
    scale = in_size / torch.sym_float(out_size)  # out_size is symbolic in a dynamic export
    support = torch.sym_max(scale, 1.0)
    centers = (torch.arange(out_size, dtype=torch.float32) + 0.5) * scale
    taps = torch.arange(in_size, dtype=torch.float32) + 0.5
    weights = _cubic((taps[None, :] - centers[:, None]) / support)
    return (weights / weights.sum(dim=1, keepdim=True)).to(dtype)
