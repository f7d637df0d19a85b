"""Weights trained elsewhere, converted for zoo models (timm's `checkpoint_filter_fn` idea).

The layout is read from the files, never from their names: a directory with a
`config.json` is a Hugging Face model directory; a single file is opened (safely) and
recognised by its tensor names. A plain segexport state_dict is none of these and
returns None, so the ordinary loader handles it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from segexport.errors import SegexportError
from segexport.importers import huggingface
from segexport.importers.base import Format, Imported, Preprocessing, Reference
from segexport.weights import apply_state_dict
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

EXPECTED = "a Hugging Face SegFormer directory (config.json + model.safetensors or pytorch_model.bin)"

_FORMATS: dict[str, Format] = {huggingface.FORMAT: cast(Format, huggingface)}


def import_weights(path: Path) -> Imported | None:
    """Convert a foreign checkpoint; None when `path` is a file in none of the known layouts."""
    if path.is_dir():
        if huggingface.is_model_directory(path):
            return huggingface.load_directory(path, huggingface.read_config(path))
        raise SegexportError(f"{path} is a directory but not a model directory; expected {EXPECTED}")
    if not path.is_file():
        raise SegexportError(f"weights {path} do not exist")
    return None


def format_module(name: str) -> Format:
    if name not in _FORMATS:
        raise SegexportError(f"unknown weights format {name!r} in the manifest; known: {', '.join(_FORMATS)}")
    return _FORMATS[name]


def build_imported(imported: Imported, options: dict[str, Any]) -> nn.Module:
    """The zoo model holding imported weights; what a partial import leaves out keeps a
    seeded initialisation, so the model can be rebuilt exactly from the manifest."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model(imported.model, num_classes=imported.num_classes, **options)
    state = {**model.state_dict(), **imported.state_dict} if imported.partial else imported.state_dict
    apply_state_dict(model, state, f"{imported.weights_file} ({imported.format})")
    return model.eval()
