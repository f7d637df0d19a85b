"""Typed readers for a model directory's third-party JSON: Hugging Face `config.json` and
`preprocessor_config.json`, timm's `config.json`.

Every field an importer reads is checked here by type and range, before anything else
(transformers' `from_pretrained` included) reads the directory: a `num_labels` of 10**9 or
a non-object `id2label` is one line naming the file and field, not a billion-entry dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segexport.runtime.jsonfile import Fields, read_json

MAX_CLASSES = 65_536
MAX_SIDE = 8192  # the export's cap on a side (segexport.export.plan.MAX_SIDE)
MAX_CONFIG_BYTES = 4 << 20
_INT_LISTS = (
    "hidden_sizes",
    "depths",
    "num_attention_heads",
    "sr_ratios",
    "mlp_ratios",
    "patch_sizes",
    "strides",
)


def _labels(check: Fields, config: dict[str, Any], key: str) -> None:
    labels = check.mapping(config[key], key)
    if len(labels) > MAX_CLASSES:
        raise check.fail(key, f"names {len(labels)} classes; at most {MAX_CLASSES:,}")
    for name, value in labels.items():
        if key == "id2label":
            if not name.lstrip("-").isdigit():
                raise check.fail(f"{key}.{name:.20}", "must be keyed by class index")
            check.string(value, f"{key}.{name}")
        else:
            check.integer(value, f"{key}.{name:.20}", 0, MAX_CLASSES - 1)


def read_hf_config(path: Path) -> dict[str, Any]:
    """`path/config.json` with the fields the importers read checked (Hugging Face or timm)."""
    file = path / "config.json"
    check = Fields(file)
    config = check.mapping(read_json(file, "model config", MAX_CONFIG_BYTES), "(top level)")
    for key in ("model_type", "architecture", "hidden_act", "transformers_version"):
        if key in config:
            check.string(config[key], key)
    if "architectures" in config:
        for index, name in enumerate(check.listing(config["architectures"], "architectures", most=64)):
            check.string(name, f"architectures[{index}]")
    if "num_labels" in config:
        check.integer(config["num_labels"], "num_labels", 1, MAX_CLASSES)
    for key in ("id2label", "label2id"):
        if config.get(key) is not None:
            _labels(check, config, key)
    for key in _INT_LISTS:
        if key in config:
            for index, value in enumerate(check.listing(config[key], key, most=16)):
                check.integer(value, f"{key}[{index}]", 1, MAX_SIDE)
    for key in ("decoder_hidden_size", "num_channels"):
        if key in config:
            check.integer(config[key], key, 1, MAX_SIDE)
    if config.get("pretrained_cfg") is not None:
        pretrained = check.mapping(config["pretrained_cfg"], "pretrained_cfg")
        for key in ("mean", "std"):
            if key in pretrained:
                check.triple(pretrained[key], f"pretrained_cfg.{key}", positive=key == "std")
    return config


def read_preprocessor_config(file: Path) -> dict[str, Any]:
    """`preprocessor_config.json` with normalisation and size checked (mean/std: three finite
    numbers, std > 0; sizes 1..MAX_SIDE)."""
    check = Fields(file)
    config = check.mapping(read_json(file, "preprocessor config", MAX_CONFIG_BYTES), "(top level)")
    for key in ("do_normalize", "do_rescale"):
        if key in config:
            check.boolean(config[key], key)
    for key in ("image_mean", "image_std"):
        if key in config:
            check.triple(config[key], key, positive=key == "image_std")
    if "rescale_factor" in config:
        check.number(config["rescale_factor"], "rescale_factor", positive=True)
    size = config.get("size")
    if isinstance(size, dict):
        for key in ("height", "width"):
            if key in size:
                check.integer(size[key], f"size.{key}", 1, MAX_SIDE)
    elif size is not None:
        check.integer(size, "size", 1, MAX_SIDE)
    return config
