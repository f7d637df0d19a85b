"""timm ViT weights (e.g. ViT-B/16) into SETR's encoder; SETR's decoder keeps its seeded start.

timm's block names are SETR's already (`blocks.N.attn.qkv`, `norm1`, `mlp.fc1`); what
differs is the patch embedding's name, the class token (SETR's `class_token` option) and
the position table, kept at the checkpoint's own grid (`img_size`) and resized per input
as timm resizes it (`pos_embed_antialias`). Heads are not stored in the weights: ViTs use
64 channels per head, so `embed_dim / 64` unless `--model-arg num_heads=N` says otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segexport.errors import SegexportError, first_line
from segexport.importers.base import Imported, Preprocessing, Reference
from segexport.importers.mapping import KeyMap
from segexport.weights import read_checkpoint, unwrap_state_dict

FORMAT = "timm-vit"
_HEAD_DIM = 64
# ViT weights published by timm mostly normalise with 0.5/0.5 (augreg, original ViT);
# a Hub directory's config.json says so explicitly and wins.
_DEFAULT = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_IGNORED = ("head.weight", "head.bias")  # the ImageNet classifier; SETR has its own decoder

KEYS = KeyMap(
    (
        ("cls_token", "cls_token"),
        ("pos_embed", "pos_embed"),
        ("patch_embed.proj.", "patch_embed."),
        ("blocks.{i}.", "blocks.{i}."),
        ("norm.", "norm."),
    )
)


def matches(state: dict[str, Any]) -> bool:
    return {"pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} <= state.keys()


def _refuse_other_designs(state: dict[str, torch.Tensor], path: Path) -> None:
    designs = {
        "fc_norm.weight": "global-average-pool ViT (fc_norm): its tokens are not normalised as SETR's are",
        "reg_token": "ViT with register tokens",
        "blocks.0.ls1.gamma": "ViT with LayerScale (DeiT III style)",
        "blocks.0.attn.q_norm.weight": "ViT with query/key norms",
        "norm_pre.weight": "ViT with a pre-norm (CLIP style)",
    }
    for key, design in designs.items():
        if key in state:
            raise SegexportError(f"{path}: a timm {design}; SETR's encoder is the plain ViT")


def from_state(
    state: dict[str, torch.Tensor], path: Path, file: Path, prep: Preprocessing, config: dict[str, Any]
) -> Imported:
    _refuse_other_designs(state, path)
    patch = state["patch_embed.proj.weight"]
    embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[2])
    if patch.shape[1] != 3:
        raise SegexportError(f"{path}: a ViT for {patch.shape[1]}-channel input; the zoo's take RGB")
    depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
    hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    if hidden != 4 * embed_dim:
        raise SegexportError(f"{path}: MLP width {hidden} is not 4 x {embed_dim}, as SETR's encoder has")
    class_token = "cls_token" in state
    tokens = int(state["pos_embed"].shape[1]) - int(class_token)
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise SegexportError(f"{path}: position table of {tokens} entries is not a square patch grid")
    options = {
        "img_size": grid * patch_size,
        "patch_size": patch_size,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": max(1, embed_dim // _HEAD_DIM),
        "class_token": class_token,
        "pos_embed_antialias": True,
    }
    kept = {k: v for k, v in state.items() if k not in _IGNORED}
    return Imported(
        format=FORMAT,
        model="setr",
        num_classes=21,
        state_dict=KEYS.rename(kept, str(file)),
        source_state=state,
        path=path,
        weights_file=file,
        options=options,
        preprocessing=prep,
        size=None,
        config={**config, "grid": [grid, grid]},
        partial=True,
        ignored=tuple(k for k in _IGNORED if k in state),
        guessed=("num_heads",),
    )


def load_file(path: Path, state: dict[str, torch.Tensor]) -> Imported:
    config = {"preprocessing": "timm ViT default mean = std = 0.5 (no config.json beside the weights)"}
    return from_state(state, path, path, _DEFAULT, config)


def load_directory(path: Path, config: dict[str, Any]) -> Imported:
    """A timm Hub directory: config.json (`architecture`, `pretrained_cfg`) + model.safetensors."""
    architecture = str(config.get("architecture", ""))
    if not architecture.startswith(("vit_", "deit_")):
        raise SegexportError(
            f"{path}: a timm {architecture or 'model'}; segexport imports timm ViTs into SETR"
        )
    file = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
    if file is None:
        raise SegexportError(f"{path}: config.json but no model.safetensors or pytorch_model.bin beside it")
    state = unwrap_state_dict(read_checkpoint(file), file)
    if not matches(state):
        raise SegexportError(f"{file}: not a timm ViT state_dict (no pos_embed / blocks.0.attn.qkv)")
    pretrained = config.get("pretrained_cfg") or {}
    prep = _DEFAULT
    if "mean" in pretrained and "std" in pretrained:
        prep = Preprocessing(tuple(pretrained["mean"]), tuple(pretrained["std"]))
    return from_state(state, path, file, prep, {"architecture": architecture})


def inverse(imported: Imported, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    del imported
    return KEYS.rename(state, "zoo state", to_zoo=False)


def reference(imported: Imported) -> Reference | str:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except Exception as error:  # timm missing, or its torchvision import failing
        return f"timm not importable ({first_line(error)})"
    options = imported.options
    source = VisionTransformer(
        img_size=options["img_size"],
        patch_size=options["patch_size"],
        embed_dim=options["embed_dim"],
        depth=options["depth"],
        num_heads=options["num_heads"],
        class_token=options["class_token"],
        global_pool="",
        num_classes=0,
        dynamic_img_size=True,
    ).eval()
    source.load_state_dict({k: v for k, v in imported.source_state.items() if k not in imported.ignored})

    def theirs(image: torch.Tensor) -> torch.Tensor:
        tokens: torch.Tensor = source.forward_features(image)
        return tokens

    def ours(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        tokens: torch.Tensor = model.encode(image)[0]  # type: ignore[operator]
        return tokens

    import timm

    return Reference(f"timm {timm.__version__} VisionTransformer tokens", theirs, ours)
