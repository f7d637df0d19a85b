"""What every importer hands the export: zoo weights plus what the source knew about them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from segexport.runtime.artifacts import sha256_file


@dataclass(frozen=True)
class Preprocessing:
    """Pixel -> tensor as the weights were trained: `(pixel * scale - mean) / std`, RGB."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1 / 255


@dataclass(frozen=True)
class Reference:
    """The source implementation, runnable: `theirs(image)` vs `ours(model, image)`."""

    label: str
    theirs: Callable[[torch.Tensor], torch.Tensor]
    ours: Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Imported:
    """A foreign checkpoint converted for a zoo model.

    `state_dict` has zoo names; `source_state` keeps the tensors as read, so the inverse
    mapping can be checked against them. `partial` imports (an encoder only) leave the
    rest of the model at its seeded initialisation.
    """

    format: str
    model: str
    num_classes: int
    state_dict: dict[str, torch.Tensor]
    source_state: dict[str, torch.Tensor]
    path: Path
    weights_file: Path
    options: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] | None = None
    preprocessing: Preprocessing | None = None
    size: tuple[int, int] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    partial: bool = False
    ignored: tuple[str, ...] = ()
    # options read off by convention, not stored in the weights: `--model-arg` may override
    guessed: tuple[str, ...] = ()

    def sha256(self) -> str:
        return sha256_file(self.weights_file)

    def record(self) -> dict[str, Any]:
        """The manifest's `source`: where the weights came from, byte-exactly."""
        return {
            "format": self.format,
            "path": str(self.path.resolve()),
            "file": self.weights_file.name,
            "sha256": self.sha256(),
            "config": self.config,
            "partial": self.partial,
            "ignored": list(self.ignored),
            "guessed": list(self.guessed),
        }


class Format(Protocol):
    """One source format (a module): its inverse mapping and, when installed, its library."""

    def inverse(self, imported: Imported, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def reference(self, imported: Imported) -> Reference | str: ...
