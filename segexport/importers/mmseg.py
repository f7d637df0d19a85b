"""mmsegmentation SegFormer checkpoints: `mit_b0`..`mit_b5` backbone + `SegformerHead`.

Differences from the zoo's names are mechanical: attention is `nn.MultiheadAttention`
(one [q; k; v] input projection, split into the zoo's `q` and `kv`), the Mix-FFN's
linear layers are 1x1 convs (reshaped), and the head concatenates the stages finest
first where the zoo's concatenates coarsest first (the fusion conv's input channels are
reordered). Two differences are real and are model options: mmseg's LayerNorms use
eps 1e-6, and its head normalises each branch (`branch_norm`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from segexport.errors import SegexportError
from segexport.importers.base import Imported, Reference
from segexport.importers.mapping import KeyMap
from segexport.zoo.segformer import SEGFORMER_VARIANTS

FORMAT = "mmseg-segformer"
OPTIONS = {"layer_norm_eps": 1e-6, "branch_norm": True}
_IGNORED_PREFIX = "auxiliary_head."  # training-only; SegFormer configs have none
_QKV = "attn.qkv."
_CONV_LINEARS = (".mlp.fc1.weight", ".mlp.fc2.weight")
_FUSION = "decode_head.linear_fuse.0.weight"

_BLOCK = "backbone.layers.{i}.1.{j}."
_ZOO_BLOCK = "stages.{i}.blocks.{j}."
KEYS = KeyMap(
    (
        ("backbone.layers.{i}.0.projection.", "stages.{i}.patch_embed.proj."),
        ("backbone.layers.{i}.0.norm.", "stages.{i}.patch_embed.norm."),
        ("backbone.layers.{i}.2.", "stages.{i}.norm."),
        *(
            (_BLOCK + source, _ZOO_BLOCK + zoo)
            for source, zoo in (
                ("norm1.", "norm1."),
                ("norm2.", "norm2."),
                ("attn.attn.in_proj_", "attn.qkv."),
                ("attn.attn.out_proj.", "attn.proj."),
                ("attn.sr.", "attn.sr."),
                ("attn.norm.", "attn.norm."),
                ("ffn.layers.0.", "mlp.fc1."),
                ("ffn.layers.1.", "mlp.dwconv."),
                ("ffn.layers.4.", "mlp.fc2."),
            )
        ),
        ("decode_head.convs.{i}.conv.", "decode_head.linear_c.{i}.0."),
        ("decode_head.convs.{i}.bn.", "decode_head.linear_c.{i}.1."),
        ("decode_head.fusion_conv.conv.", "decode_head.linear_fuse.0."),
        ("decode_head.fusion_conv.bn.", "decode_head.linear_fuse.1."),
        ("decode_head.conv_seg.", "decode_head.linear_pred."),
    )
)


def matches(state: dict[str, Any]) -> bool:
    return "backbone.layers.0.1.0.attn.attn.in_proj_weight" in state


def _head_type(raw: object, state: dict[str, Any]) -> str:
    """The decode head's type from the checkpoint's config text, else its module names."""
    meta = raw.get("meta") if isinstance(raw, dict) else None
    if isinstance(meta, dict):
        for key in ("cfg", "config"):
            text = meta.get(key)
            found = (
                re.search(r"decode_head\s*=\s*dict\(\s*type\s*=\s*['\"](\w+)", text)
                if isinstance(text, str)
                else None
            )
            if found:
                return found.group(1)
    modules = sorted({key.split(".")[1] for key in state if key.startswith("decode_head.")})
    return f"a head with {', '.join(modules) or 'no modules'}"


def _class_names(raw: object, num_classes: int) -> tuple[str, ...] | None:
    meta = raw.get("meta") if isinstance(raw, dict) else None
    if not isinstance(meta, dict):
        return None
    dataset = meta.get("dataset_meta")
    names = dataset.get("classes") if isinstance(dataset, dict) else meta.get("CLASSES")
    if isinstance(names, list | tuple) and len(names) == num_classes:
        return tuple(str(name) for name in names)
    return None


def _variant(state: dict[str, torch.Tensor], path: Path) -> str:
    dims = [int(state[f"backbone.layers.{i}.0.projection.weight"].shape[0]) for i in range(4)]
    depths = [
        len({k.split(".")[4] for k in state if k.startswith(f"backbone.layers.{i}.1.")}) for i in range(4)
    ]
    decoder = int(state["decode_head.fusion_conv.conv.weight"].shape[0])
    for name, config in SEGFORMER_VARIANTS.items():
        if (
            list(config.embed_dims) == dims
            and list(config.depths) == depths
            and config.decoder_dim == decoder
        ):
            return name
    raise SegexportError(f"{path}: a MiT with widths {dims}, depths {depths} is none of mit_b0..mit_b5")


def load(path: Path, state: dict[str, torch.Tensor], raw: object) -> Imported:
    if "decode_head.fusion_conv.conv.weight" not in state or "decode_head.convs.0.conv.weight" not in state:
        raise SegexportError(
            f"{path}: an mmseg checkpoint with a MiT backbone and {_head_type(raw, state)} as decode head; "
            "segexport imports mit_b0..mit_b5 with SegformerHead"
        )
    variant = _variant(state, path)
    kept = {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIX)}
    zoo = KEYS.rename(kept, str(path))
    for key in [k for k in zoo if _QKV in k]:
        qkv = zoo.pop(key)
        dim = qkv.shape[0] // 3
        zoo[key.replace(_QKV, "attn.q.")] = qkv[:dim]
        zoo[key.replace(_QKV, "attn.kv.")] = qkv[dim:]
    for key in [k for k in zoo if k.endswith(_CONV_LINEARS)]:
        zoo[key] = zoo[key].flatten(1)
    zoo[_FUSION] = _reverse_blocks(zoo[_FUSION])
    num_classes = int(zoo["decode_head.linear_pred.weight"].shape[0])
    meta = raw.get("meta") if isinstance(raw, dict) else None
    versions = {
        k: meta[k] for k in ("mmseg_version", "mmengine_version") if isinstance(meta, dict) and k in meta
    }
    return Imported(
        format=FORMAT,
        model=f"segformer-{variant}",
        num_classes=num_classes,
        state_dict=zoo,
        source_state=state,
        path=path,
        weights_file=path,
        options=dict(OPTIONS),
        class_names=_class_names(raw, num_classes),
        config={"backbone": f"mit_{variant}", "decode_head": "SegformerHead", **versions},
        ignored=tuple(k for k in state if k.startswith(_IGNORED_PREFIX)),
    )


def _reverse_blocks(weight: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """Reverse the order of the input-channel blocks of a fusion conv (its own inverse)."""
    return torch.cat(list(weight.chunk(blocks, dim=1))[::-1], dim=1)


def inverse(imported: Imported, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    del imported
    zoo = dict(state)
    zoo[_FUSION] = _reverse_blocks(zoo[_FUSION])
    for key in [k for k in zoo if k.endswith(_CONV_LINEARS)]:
        zoo[key] = zoo[key][:, :, None, None]
    for key in [k for k in zoo if ".attn.q." in k]:
        zoo[key.replace(".attn.q.", "." + _QKV)] = torch.cat(
            [zoo.pop(key), zoo.pop(key.replace(".q.", ".kv."))]
        )
    return KEYS.rename(zoo, "zoo state", to_zoo=False)


def reference(imported: Imported) -> Reference | str:
    del imported
    return "mmsegmentation is not installed with segexport; checked by the inverse mapping"
