"""segmentation_models_pytorch checkpoints: recognised, and sent to the door that takes them.

smp models come through `--model FILE.py:FUNCTION --weights CKPT` (a factory building the smp
model; docs/your-model.md), not through the zoo's importers:

smp's architectures differ from the zoo's by design (its DeepLabV3+ has separable ASPP
convs and a dilated last encoder block; its U-Net decoder has other widths and no
transposed convs), so its weights would load only into a model that looks the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segexport.errors import SegexportError


def matches(state: dict[str, Any]) -> bool:
    return "segmentation_head.0.weight" in state and any(key.startswith("encoder.") for key in state)


def refuse(path: Path, state: dict[str, Any]) -> SegexportError:
    if any(key.startswith("decoder.aspp.") for key in state):
        design = "DeepLabV3+ with separable ASPP convs and a dilated last encoder block"
    else:
        design = "model whose decoder differs from the zoo's by design"
    return SegexportError(
        f"{path}: a segmentation_models_pytorch {design}; not a zoo model: export it as your own model, "
        "--model FILE.py:FUNCTION (a factory returning the smp model) --weights CKPT (docs/your-model.md)"
    )
