"""Weights trained elsewhere, converted for zoo models (timm's `checkpoint_filter_fn` idea).

The layout is read from the files, never from their names: a directory with a
`config.json` is a Hugging Face (transformers or timm) model directory; a single file is
opened (safely, `weights_only=True`) and recognised by its tensor names. A plain
segexport state_dict is none of these and gives None, so the ordinary loader handles it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from segexport.errors import SegexportError
from segexport.importers import huggingface, milesial, mmseg, smp, timm_vit, vainf
from segexport.importers.base import Format, Imported, Preprocessing, Reference
from segexport.weights import apply_state_dict, read_checkpoint, unwrap_state_dict
from segexport.zoo import create_model

__all__ = [
    "EXPECTED",
    "Imported",
    "Preprocessing",
    "Reference",
    "build_imported",
    "format_module",
    "import_weights",
]

EXPECTED = (
    "a Hugging Face SegFormer directory (config.json + model.safetensors or pytorch_model.bin), "
    "an mmseg SegFormer .pth (mit_b0..b5 + SegformerHead), "
    "a timm ViT (directory or file), a milesial Pytorch-UNet or VainF DeepLabV3Plus-Pytorch checkpoint"
)

_FORMATS: dict[str, Format] = {
    huggingface.FORMAT: cast(Format, huggingface),
    timm_vit.FORMAT: cast(Format, timm_vit),
    mmseg.FORMAT: cast(Format, mmseg),
    milesial.FORMAT: cast(Format, milesial),
    vainf.FORMAT: cast(Format, vainf),
}


def import_weights(path: Path) -> Imported | None:
    """Convert a foreign checkpoint; None when `path` is a file in none of the known layouts."""
    if path.is_dir():
        if not huggingface.is_model_directory(path):
            raise SegexportError(f"{path} is a directory but not a model directory; expected {EXPECTED}")
        config = huggingface.read_config(path)
        if "architecture" in config and "model_type" not in config:
            return timm_vit.load_directory(path, config)
        return huggingface.load_directory(path, config)
    if not path.is_file():
        raise SegexportError(f"weights {path} do not exist")
    raw = read_checkpoint(path)
    state = unwrap_state_dict(raw, path, skip_other=True)
    if mmseg.matches(state):
        return mmseg.load(path, state, raw)
    if timm_vit.matches(state):
        return timm_vit.load_file(path, state)
    if milesial.matches(state):
        return milesial.load(path, state, raw)
    if vainf.matches(state):
        return vainf.load(path, state, raw)
    if smp.matches(state):
        raise smp.refuse(path, state)
    return None


def format_module(name: str) -> Format:
    if name not in _FORMATS:
        known = ", ".join(_FORMATS)
        raise SegexportError(f"unknown weights format {name!r} in the manifest; known: {known}")
    return _FORMATS[name]


def build_imported(imported: Imported, options: dict[str, Any], num_classes: int | None = None) -> nn.Module:
    """The zoo model holding imported weights; what a partial import leaves out (a decoder
    of any `num_classes`) keeps a seeded initialisation, so the manifest can rebuild it."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model(imported.model, num_classes=num_classes or imported.num_classes, **options)
    state = {**model.state_dict(), **imported.state_dict} if imported.partial else imported.state_dict
    apply_state_dict(model, state, f"{imported.weights_file} ({imported.format})")
    return model.eval()
