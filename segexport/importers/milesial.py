"""milesial's Pytorch-UNet checkpoints (`bilinear=False`), the zoo's U-Net under other names.

Its training script saves the state_dict plus `mask_values` (the mask pixel value of
each class) and feeds images as plain `pixel / 255`, without mean/std: both go into the
manifest, so the runtime feeds what the weights expect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segexport.errors import SegexportError
from segexport.importers.base import Imported, Preprocessing, Reference
from segexport.importers.mapping import KeyMap
from segexport.zoo.unet import UNET_FEATURES

FORMAT = "milesial-unet"
PREPROCESSING = Preprocessing((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

KEYS = KeyMap(
    (
        ("inc.", "encoder.0."),
        *((f"down{k}.maxpool_conv.1.", f"encoder.{k}.") for k in range(1, 5)),
        *((f"up{k}.up.", f"decoder.{2 * (k - 1)}.") for k in range(1, 5)),
        *((f"up{k}.conv.", f"decoder.{2 * k - 1}.") for k in range(1, 5)),
        ("outc.conv.", "final_conv."),
    )
)


def matches(state: dict[str, Any]) -> bool:
    return "inc.double_conv.0.weight" in state and "outc.conv.weight" in state


def load(path: Path, state: dict[str, torch.Tensor], raw: object) -> Imported:
    if "up1.up.weight" not in state:
        raise SegexportError(
            f"{path}: a milesial U-Net with bilinear=True (upsampling without transposed convs, "
            "halved widths); the zoo's U-Net is milesial's bilinear=False"
        )
    first = state["inc.double_conv.0.weight"]
    if first.shape[1] != 3:
        raise SegexportError(f"{path}: a U-Net for {first.shape[1]}-channel input; the zoo's take RGB")
    width = int(first.shape[0])
    features = tuple(width * 2**level for level in range(5))
    options: dict[str, Any] = {"conv_bias": "inc.double_conv.0.bias" in state}
    if features != UNET_FEATURES:
        options["features"] = list(features)
    num_classes = int(state["outc.conv.weight"].shape[0])
    mask_values = raw.get("mask_values") if isinstance(raw, dict) else None
    names = None
    if isinstance(mask_values, list) and len(mask_values) == num_classes:
        names = tuple(f"mask_value_{value}" for value in mask_values)
    return Imported(
        format=FORMAT,
        model="unet",
        num_classes=num_classes,
        state_dict=KEYS.rename(state, str(path)),
        source_state=state,
        path=path,
        weights_file=path,
        options=options,
        class_names=names,
        preprocessing=PREPROCESSING,
        config={"mask_values": mask_values, "preprocessing": "pixel / 255, no mean/std (milesial's)"},
    )


def inverse(imported: Imported, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    del imported
    return KEYS.rename(state, "zoo state", to_zoo=False)


def reference(imported: Imported) -> Reference | str:
    del imported
    return "milesial's Pytorch-UNet is not a package; checked by the inverse mapping"
