"""SegFormer (Xie et al., 2021): the MiT encoder as published and the all-MLP decoder.

Seed fixes (the seed's SegFormer did not match the paper):
- spatial-reduction ratio was 4 in every stage; the paper uses 8/4/2/1;
- the feed-forward lacked Mix-FFN's 3x3 depthwise conv (the only positional cue);
- overlapping patch embeddings lacked their LayerNorm; attention had no key/value
  projection of its own (nn.MultiheadAttention), which also breaks dynamic export;
- the decoder lacked the fusion layer (1x1 conv + BN + ReLU over the concatenated
  maps) and used BN where the paper has a plain linear layer;
- logits came out at 1/4 resolution; they are upsampled to the input size now
  (`full_resolution=False` keeps the 1/4 map, and the manifest then says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segexport.zoo.transformer import attend, map_to_tokens, merge_heads, split_heads, tokens_to_map


@dataclass(frozen=True)
class MiTConfig:
    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    decoder_dim: int
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


# The paper's table 1 / released configs.
SEGFORMER_VARIANTS = {
    "b0": MiTConfig((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "b1": MiTConfig((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "b2": MiTConfig((64, 128, 320, 512), (3, 4, 6, 3), 768),
    "b3": MiTConfig((64, 128, 320, 512), (3, 4, 18, 3), 768),
    "b4": MiTConfig((64, 128, 320, 512), (3, 8, 27, 3), 768),
    "b5": MiTConfig((64, 128, 320, 512), (3, 6, 40, 3), 768),
}


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[2], x.shape[3]
        return self.norm(map_to_tokens(x)), height, width


class EfficientSelfAttention(nn.Module):
    """Self-attention whose keys/values come from a map shrunk by `sr_ratio` per side."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.sr: nn.Module = nn.Identity()
        self.norm: nn.Module = nn.Identity()
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        q = split_heads(self.q(x), self.num_heads)
        kv_tokens = x
        if self.sr_ratio > 1:
            reduced = self.sr(tokens_to_map(x, height, width))
            kv_tokens = self.norm(map_to_tokens(reduced))
        k, v = self.kv(kv_tokens).chunk(2, dim=-1)
        out = attend(q, split_heads(k, self.num_heads), split_heads(v, self.num_heads))
        return self.proj(merge_heads(out))


class MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(x)
        x = map_to_tokens(self.dwconv(tokens_to_map(x, height, width)))
        return self.fc2(self.act(x))


class MiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), height, width)
        return x + self.mlp(self.norm2(x), height, width)


class MiTStage(nn.Module):
    def __init__(
        self,
        in_channels: int,
        dim: int,
        depth: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        first: bool,
    ) -> None:
        super().__init__()
        patch, stride = (7, 4) if first else (3, 2)
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, patch, stride)
        self.blocks = nn.ModuleList([MiTBlock(dim, num_heads, sr_ratio, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, height, width = self.patch_embed(x)
        for block in self.blocks:
            tokens = block(tokens, height, width)
        return tokens_to_map(self.norm(tokens), height, width)


class MLPDecoder(nn.Module):
    """All-MLP head: unify widths, upsample to 1/4, concatenate, fuse, classify.

    `branch_norm=True` is mmsegmentation's `SegformerHead`: each width-unifying layer is a
    1x1 conv with BatchNorm and ReLU instead of a plain linear layer.
    """

    def __init__(
        self, in_channels: Sequence[int], dim: int, num_classes: int, branch_norm: bool = False
    ) -> None:
        super().__init__()
        self.branch_norm = branch_norm
        self.linear_c = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(c, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
                if branch_norm
                else nn.Linear(c, dim)
                for c in in_channels
            ]
        )
        self.linear_fuse = nn.Sequential(
            nn.Conv2d(dim * len(in_channels), dim, 1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(0.1)
        self.linear_pred = nn.Conv2d(dim, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        target = features[0].shape[2:]
        fused = []
        for feature, linear in zip(features, self.linear_c, strict=True):
            height, width = feature.shape[2], feature.shape[3]
            if self.branch_norm:
                mapped = linear(feature)
            else:
                mapped = tokens_to_map(linear(map_to_tokens(feature)), height, width)
            if mapped.shape[2:] != target:
                mapped = F.interpolate(mapped, size=target, mode="bilinear", align_corners=False)
            fused.append(mapped)
        # mmseg concatenates coarsest first; keep that order so its weights map 1:1.
        x = self.linear_fuse(torch.cat(fused[::-1], dim=1))
        return self.linear_pred(self.dropout(x))


class SegFormer(nn.Module):
    """`layer_norm_eps` and `branch_norm` reproduce mmsegmentation's SegFormer (1e-6, and
    its `SegformerHead`); the defaults are the Hugging Face implementation's."""

    def __init__(
        self,
        num_classes: int = 150,
        variant: str = "b0",
        full_resolution: bool = True,
        layer_norm_eps: float = 1e-5,
        branch_norm: bool = False,
    ) -> None:
        super().__init__()
        if variant not in SEGFORMER_VARIANTS:
            raise ValueError(f"variant must be one of {sorted(SEGFORMER_VARIANTS)}, got {variant!r}")
        config = SEGFORMER_VARIANTS[variant]
        self.full_resolution = full_resolution
        stages = []
        in_channels = 3
        for index in range(4):
            stages.append(
                MiTStage(
                    in_channels,
                    config.embed_dims[index],
                    config.depths[index],
                    config.num_heads[index],
                    config.sr_ratios[index],
                    config.mlp_ratio,
                    first=index == 0,
                )
            )
            in_channels = config.embed_dims[index]
        self.stages = nn.ModuleList(stages)
        self.decode_head = MLPDecoder(config.embed_dims, config.decoder_dim, num_classes, branch_norm)
        for module in self.stages.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = layer_norm_eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_size = x.shape[2:]
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        logits = self.decode_head(features)
        if self.full_resolution:
            logits = F.interpolate(logits, size=input_size, mode="bilinear", align_corners=False)
        return logits
