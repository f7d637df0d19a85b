"""The PyTorch reference: the model an artifact came from, run as a `Runner`.

Every stage checks its artifact against this reference; `verify_runners` feeds both the
same seeded random inputs at several shapes, so a dynamic axis that only looks dynamic
(a size baked into the graph) fails with the runtime's message instead of crashing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segexport.compare import Tolerance, VerificationReport
from segexport.errors import SegexportError
from segexport.importers import build_imported, import_weights
from segexport.runtime import Runner
from segexport.runtime.artifacts import sha256_file
from segexport.runtime.judge import compare_on_feeds
from segexport.shapes import InputShape
from segexport.weights import load_weights, resolve_weights
from segexport.zoo.registry import ModelSpec, create_model


def reference_model(manifest: dict[str, Any], weights: str | Path | None = None) -> nn.Module:
    """The PyTorch model an artifact was exported from, rebuilt from its manifest.

    The checkpoint is the path the manifest records, or `weights` (a path or `demo`) when
    the artifact moved to another machine; either way its sha256 must be the recorded one.
    """
    info = manifest["model"]
    recorded = info.get("weights")
    if not recorded:
        raise SegexportError(
            f"{info['name']} was exported with random weights: its PyTorch reference cannot be rebuilt; "
            "export with --weights CKPT (or --weights demo)"
        )
    if recorded.get("format"):
        return _imported_reference(info, Path(recorded["path"] if weights is None else weights))
    path = Path(recorded["path"]) if weights is None else resolve_weights(info["name"], weights).path
    if not path.is_file() or sha256_file(path) != recorded["sha256"]:
        raise SegexportError(f"{path}: the checkpoint this artifact was exported from is missing or changed")
    model = create_model(info["name"], num_classes=info["num_classes"], **info.get("options", {}))
    load_weights(model, path)
    return model.eval()


def _imported_reference(info: dict[str, Any], path: Path) -> nn.Module:
    """Foreign weights (Hugging Face, mmseg, timm, ports) converted again, as at export."""
    recorded = info["weights"]
    imported = import_weights(path) if path.exists() else None
    if imported is None or imported.format != recorded["format"] or imported.sha256() != recorded["sha256"]:
        raise SegexportError(f"{path}: the weights this artifact was exported from are missing or changed")
    return build_imported(imported, info.get("options", {}), info["num_classes"])


def data_size(manifest: dict[str, Any]) -> tuple[int, int]:
    """The image size to check an artifact at: its checkpoint's training size, else its export size."""
    trained = manifest["model"].get("trained") or {}
    if "input_size" in trained:
        height, width = trained["input_size"]
        return int(height), int(width)
    _, height, width = (int(v) for v in manifest["export_shape"].split("x"))
    return height, width


class TorchRunner:
    """The PyTorch reference as a Runner; outputs are flattened in the spec's order."""

    def __init__(self, model: nn.Module, output_names: Sequence[str], threads: int | None = None):
        self.model = model.eval()
        self._output_names = list(output_names)
        self.threads = threads
        self.name = f"pytorch:{type(model).__name__}"

    @property
    def output_names(self) -> list[str]:
        return self._output_names

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                result = self.model(*(torch.from_numpy(v) for v in feeds.values()))
        finally:
            torch.set_num_threads(previous)
        outputs = flatten_outputs(result)
        return {n: o.numpy() for n, o in zip(self._output_names, outputs, strict=True)}


def flatten_outputs(result: Any) -> tuple[torch.Tensor, ...]:
    """A model's return value (tensor, tuple/list, dict) as a flat tuple of tensors."""
    if isinstance(result, torch.Tensor):
        return (result,)
    if isinstance(result, dict):
        result = list(result.values())
    flat: list[torch.Tensor] = []
    for item in result:
        flat.extend(flatten_outputs(item))
    return tuple(flat)


def verify_runners(
    spec: ModelSpec,
    num_classes: int,
    reference: Runner,
    candidate: Runner,
    shapes: Sequence[InputShape],
    tolerance: Tolerance,
    progress: Callable[[str], None] | None = None,
    seed: int = 0,
) -> VerificationReport:
    """Run both runners on the same seeded random inputs at every shape and compare."""
    generator = torch.Generator().manual_seed(seed)

    def cases() -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        for shape in shapes:  # generated lazily: the seeded stream stays as it was
            inputs = spec.example_inputs(shape, num_classes, generator)
            yield str(shape), {name: tensor.numpy() for name, tensor in inputs.items()}

    return compare_on_feeds(reference, candidate, cases(), tolerance, spec.logits_outputs, progress)
