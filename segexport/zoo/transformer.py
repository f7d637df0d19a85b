"""Attention written out with shape-agnostic reshapes, shared by SETR and SegFormer.

`nn.MultiheadAttention` traced by the TorchScript exporter bakes the sequence length
into its reshapes (platform notes); here every reshape takes its sizes from the
tensors at run time, so dynamic batch, height and width survive export.
"""

from __future__ import annotations

import torch
from torch import nn


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, N, C] -> [B, heads, N, C / heads]."""
    batch, tokens, channels = x.shape
    return x.reshape(batch, tokens, num_heads, channels // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, D] -> [B, N, heads * D]."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over split heads; MatMul-Softmax-MatMul is what TensorRT fuses."""
    scale = q.shape[-1] ** -0.5
    weights = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
    return weights @ v


def tokens_to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, H*W, C] -> [B, C, H, W], as a reshape to channels-last and then one Transpose.

    The same values as transposing first and reshaping, but the exported graph ends in a
    plain NHWC -> NCHW Transpose, which ONNX Runtime cancels against the NCHW -> NHWC one it
    puts before an integer (QLinearConv) convolution: no layout round trip per conv."""
    return x.reshape(x.shape[0], height, width, x.shape[2]).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C], one Transpose to channels-last first (see tokens_to_map)."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused qkv projection (ViT layout)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        heads = (split_heads(t, self.num_heads) for t in (q, k, v))
        return self.proj(merge_heads(attend(*heads)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block as in ViT, the encoder SETR uses."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
