"""VainF's DeepLabV3Plus-Pytorch checkpoints (ResNet-50), into the zoo's DeepLabV3+.

The backbone is torchvision's ResNet-50 under `backbone.`; the head differs in two
details: one 3x3 refinement conv (the zoo's `decoder_convs=1`), and the fusion conv
reads [low-level, ASPP] where the zoo concatenates [ASPP, low-level], so that conv's
input channels are swapped. Its MobileNetV2 variant is refused: it pads its dilated
depthwise convs itself before each conv, which the zoo's MobileNetV2 does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segexport.errors import SegexportError
from segexport.importers.base import Imported, Reference
from segexport.importers.mapping import KeyMap

FORMAT = "vainf-deeplabv3plus"
_LOW = 48  # channels of the projected low-level features
_FUSION_SOURCE = "classifier.classifier.0.weight"
_FUSION_ZOO = "decoder.0.weight"

KEYS = KeyMap(
    (
        ("backbone.", "backbone.body."),
        ("classifier.project.", "low_level_conv."),
        ("classifier.aspp.", "aspp."),
        ("classifier.classifier.", "decoder."),
    )
)


def matches(state: dict[str, Any]) -> bool:
    return "classifier.aspp.convs.0.0.weight" in state and "classifier.project.0.weight" in state


def load(path: Path, state: dict[str, torch.Tensor], raw: object) -> Imported:
    if any(
        key.startswith(("backbone.low_level_features.", "backbone.high_level_features.")) for key in state
    ):
        raise SegexportError(
            f"{path}: VainF's DeepLabV3+ MobileNetV2, which pads its dilated depthwise convs "
            "itself (fixed_padding) where the zoo's MobileNetV2 pads inside the conv; refused rather "
            "than loaded into a model that only looks the same"
        )
    if "backbone.layer4.2.conv3.weight" not in state or "backbone.layer3.5.conv3.weight" not in state:
        raise SegexportError(f"{path}: a VainF DeepLabV3+ whose backbone is not ResNet-50")
    if "classifier.classifier.3.weight" not in state:
        raise SegexportError(f"{path}: a VainF DeepLabV3 (no '+' decoder); the zoo has DeepLabV3+")
    zoo = KEYS.rename(state, str(path))
    fusion = zoo[_FUSION_ZOO]
    zoo[_FUSION_ZOO] = torch.cat([fusion[:, _LOW:], fusion[:, :_LOW]], dim=1)
    record = (
        {"itrs": raw.get("cur_itrs"), "best_score": _plain(raw.get("best_score"))}
        if isinstance(raw, dict)
        else {}
    )
    return Imported(
        format=FORMAT,
        model="deeplabv3plus",
        num_classes=int(state["classifier.classifier.3.weight"].shape[0]),
        state_dict=zoo,
        source_state=state,
        path=path,
        weights_file=path,
        options={"decoder_convs": 1, "output_stride": 16},
        config={**record, "output_stride": "16 assumed (VainF's training default; weights do not say)"},
        guessed=("output_stride",),
    )


def _plain(value: object) -> object:
    """JSON-friendly `best_score` (VainF stores a float or a metrics dict)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if not isinstance(v, torch.Tensor)}
    return value if isinstance(value, int | float | str) or value is None else str(value)


def inverse(imported: Imported, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    del imported
    swapped = dict(state)
    fusion = state[_FUSION_ZOO]
    aspp = fusion.shape[1] - _LOW
    swapped[_FUSION_ZOO] = torch.cat([fusion[:, aspp:], fusion[:, :aspp]], dim=1)
    return KEYS.rename(swapped, "zoo state", to_zoo=False)


def reference(imported: Imported) -> Reference | str:
    del imported
    return "VainF's DeepLabV3Plus-Pytorch is not a package; checked by the inverse mapping"
