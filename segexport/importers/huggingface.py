"""Hugging Face SegFormer model directories (`save_pretrained` / Hub downloads).

Two key layouts exist: the Hub's on-disk names, which `save_pretrained` still writes
(`segformer.encoder.block.0.0.attention.self.query`), and transformers 5's in-memory
names (`segformer.stages.0.blocks.0.attention.q_proj`). The in-memory names are first
brought to the on-disk ones, then one two-way map leads to the zoo's SegFormer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segexport.errors import SegexportError, first_line
from segexport.importers.base import Imported, Preprocessing, Reference
from segexport.importers.configs import read_hf_config, read_preprocessor_config
from segexport.importers.mapping import KeyMap, concat_pairs, split_pairs
from segexport.weights import read_checkpoint, unwrap_state_dict
from segexport.zoo.segformer import SEGFORMER_VARIANTS

FORMAT = "huggingface-segformer"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_ARCHITECTURE = "SegformerForSemanticSegmentation"

# transformers 5's in-memory names -> the Hub's on-disk names.
_IN_MEMORY = KeyMap(
    (
        ("segformer.stages.{i}.patch_embeddings.", "segformer.encoder.patch_embeddings.{i}."),
        ("segformer.stages.{i}.layer_norm.", "segformer.encoder.layer_norm.{i}."),
        *(
            (f"segformer.stages.{{i}}.blocks.{{j}}.{new}", f"segformer.encoder.block.{{i}}.{{j}}.{old}")
            for new, old in (
                ("layernorm_before.", "layer_norm_1."),
                ("layernorm_after.", "layer_norm_2."),
                ("attention.q_proj.", "attention.self.query."),
                ("attention.k_proj.", "attention.self.key."),
                ("attention.v_proj.", "attention.self.value."),
                ("attention.o_proj.", "attention.output.dense."),
                ("attention.sequence_reduction.sequence_reduction.", "attention.self.sr."),
                ("attention.sequence_reduction.layer_norm.", "attention.self.layer_norm."),
                ("mlp.fc1.", "mlp.dense1."),
                ("mlp.fc2.", "mlp.dense2."),
                ("mlp.dwconv.", "mlp.dwconv."),
            )
        ),
        ("decode_head.linear_projections.", "decode_head.linear_c."),
        ("decode_head.", "decode_head."),
    )
)

_BLOCK = "segformer.encoder.block.{i}.{j}."
_ZOO_BLOCK = "stages.{i}.blocks.{j}."
# The Hub's on-disk names -> the zoo's names (`attn.k`/`attn.v` are joined into `attn.kv`).
HUB_TO_ZOO = KeyMap(
    (
        ("segformer.encoder.patch_embeddings.{i}.proj.", "stages.{i}.patch_embed.proj."),
        ("segformer.encoder.patch_embeddings.{i}.layer_norm.", "stages.{i}.patch_embed.norm."),
        ("segformer.encoder.layer_norm.{i}.", "stages.{i}.norm."),
        *(
            (_BLOCK + hub, _ZOO_BLOCK + zoo)
            for hub, zoo in (
                ("layer_norm_1.", "norm1."),
                ("layer_norm_2.", "norm2."),
                ("attention.self.query.", "attn.q."),
                ("attention.self.key.", "attn.k."),
                ("attention.self.value.", "attn.v."),
                ("attention.self.sr.", "attn.sr."),
                ("attention.self.layer_norm.", "attn.norm."),
                ("attention.output.dense.", "attn.proj."),
                ("mlp.dense1.", "mlp.fc1."),
                ("mlp.dwconv.dwconv.", "mlp.dwconv."),
                ("mlp.dense2.", "mlp.fc2."),
            )
        ),
        ("decode_head.linear_c.{i}.proj.", "decode_head.linear_c.{i}."),
        ("decode_head.linear_fuse.", "decode_head.linear_fuse.0."),
        ("decode_head.batch_norm.", "decode_head.linear_fuse.1."),
        ("decode_head.classifier.", "decode_head.linear_pred."),
    )
)
_KV = (".attn.k.", ".attn.v.")


def is_model_directory(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def read_config(path: Path) -> dict[str, Any]:
    """`config.json`, bounded and typed (importers.configs) before anything else reads the directory."""
    return read_hf_config(path)


def variant_of(config: dict[str, Any], path: Path) -> str:
    """The zoo variant (b0..b5) whose every size the config names; refused otherwise."""
    described = {
        "hidden_sizes": list(config.get("hidden_sizes", [])),
        "depths": list(config.get("depths", [])),
        "decoder_hidden_size": config.get("decoder_hidden_size"),
        "num_attention_heads": list(config.get("num_attention_heads", [])),
        "sr_ratios": list(config.get("sr_ratios", [])),
        "mlp_ratios": list(config.get("mlp_ratios", [])),
    }
    fixed = {"num_channels": 3, "patch_sizes": [7, 3, 3, 3], "strides": [4, 2, 2, 2], "hidden_act": "gelu"}
    for key, value in fixed.items():
        if key in config and config[key] != value:
            raise SegexportError(f"{path}: SegFormer with {key}={config[key]} (the zoo's have {value})")
    for name, variant in SEGFORMER_VARIANTS.items():
        expected = {
            "hidden_sizes": list(variant.embed_dims),
            "depths": list(variant.depths),
            "decoder_hidden_size": variant.decoder_dim,
            "num_attention_heads": list(variant.num_heads),
            "sr_ratios": list(variant.sr_ratios),
            "mlp_ratios": [variant.mlp_ratio] * 4,
        }
        if described == expected:
            return name
    sizes = f"hidden_sizes {described['hidden_sizes']}, depths {described['depths']}"
    raise SegexportError(f"{path}: config.json describes a SegFormer ({sizes}) that is none of b0..b5")


def _weights_file(path: Path) -> Path:
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    if any(path.glob("*.index.json")):
        raise SegexportError(f"{path}: sharded checkpoints are not supported; SegFormer fits one file")
    raise SegexportError(f"{path}: config.json but no {' or '.join(WEIGHT_FILES)} beside it")


def _class_names(config: dict[str, Any], num_classes: int) -> tuple[str, ...] | None:
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or len(id2label) != num_classes:
        return None
    try:
        return tuple(str(id2label[key]) for key in sorted(id2label, key=int))
    except ValueError:
        return None


def _preprocessing(path: Path) -> tuple[Preprocessing | None, tuple[int, int] | None]:
    """Normalisation and input size from `preprocessor_config.json`, when the directory has one."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return None, None
    config = read_preprocessor_config(file)
    prep = None
    if config.get("do_normalize", True) and "image_mean" in config and "image_std" in config:
        scale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
        prep = Preprocessing(tuple(config["image_mean"]), tuple(config["image_std"]), scale)
    size = config.get("size")
    hw = None
    if isinstance(size, dict) and "height" in size and "width" in size:
        hw = (int(size["height"]), int(size["width"]))
    elif isinstance(size, int):  # older feature-extractor configs (the Hub's SegFormers): one side
        hw = (size, size)
    return prep, hw


def to_hub_names(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Bring transformers 5's in-memory names to the Hub's on-disk ones (a no-op for the latter)."""
    if not any(key.startswith("segformer.stages.") or ".linear_projections." in key for key in state):
        return state
    return _IN_MEMORY.rename(state, source)


def load_directory(path: Path, config: dict[str, Any]) -> Imported:
    architectures = config.get("architectures") or []
    if config.get("model_type") != "segformer" or _ARCHITECTURE not in architectures:
        found = ", ".join(architectures) or config.get("model_type", "unknown")
        raise SegexportError(
            f"{path}: a Hugging Face {found} model; segexport imports {_ARCHITECTURE} "
            "(config.json model_type 'segformer')"
        )
    variant = variant_of(config, path)
    file = _weights_file(path)
    hub = to_hub_names(unwrap_state_dict(read_checkpoint(file), file), str(file))
    state = concat_pairs(HUB_TO_ZOO.rename(hub, str(file)), _KV, ".attn.kv.", str(file))
    head = state.get("decode_head.linear_pred.weight")
    if head is None:
        raise SegexportError(f"{file}: no decode head (decode_head.classifier); an encoder-only checkpoint")
    num_classes = int(head.shape[0])
    labels = config.get("id2label") or {}
    if labels and len(labels) != num_classes:
        raise SegexportError(
            f"{path}: config.json names {len(labels)} classes, {file.name} has a {num_classes}-class head"
        )
    prep, size = _preprocessing(path)
    return Imported(
        format=FORMAT,
        model=f"segformer-{variant}",
        num_classes=num_classes,
        state_dict=state,
        source_state=hub,
        path=path,
        weights_file=file,
        class_names=_class_names(config, num_classes),
        preprocessing=prep,
        size=size,
        config={k: config[k] for k in ("model_type", "architectures", "transformers_version") if k in config},
    )


def inverse(imported: Imported, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    del imported
    return HUB_TO_ZOO.rename(split_pairs(state, ".attn.kv.", _KV), "zoo state", to_zoo=False)


def reference(imported: Imported) -> Reference | str:
    try:
        from transformers import SegformerForSemanticSegmentation
    except Exception as error:  # transformers missing, or failing on its own imports
        return f"transformers not importable ({first_line(error)})"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress is ours to show
    source = SegformerForSemanticSegmentation.from_pretrained(str(imported.path)).eval()

    def theirs(image: torch.Tensor) -> torch.Tensor:
        logits = source(pixel_values=image).logits
        return F.interpolate(logits, size=image.shape[2:], mode="bilinear", align_corners=False)

    def ours(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = model(image)
        return output

    version = imported.config.get("transformers_version", "?")
    return Reference(
        f"transformers {_installed_version()} {_ARCHITECTURE} (saved by {version})", theirs, ours
    )


def _installed_version() -> str:
    import transformers

    return str(transformers.__version__)
