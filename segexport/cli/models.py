"""`segexport zoo`, `train` and `eval`: the models themselves, before any export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segexport.cli._base import POSITIVE, Float, echo_json, main, progress
from segexport.cli.options import (
    data_option,
    force_option,
    json_option,
    limit_option,
    model_arg_option,
    model_option,
    size_option,
    weights_option,
)


@main.command("zoo")
@json_option("Machine-readable output.")
def zoo(as_json: bool) -> None:
    """List the model zoo: parameters, default input size, outputs."""
    rows = _zoo_rows()
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{'model':27} {'params':>8} {'input':>22}  outputs")
    for row in rows:
        params = f"{row['parameters'] / 1e6:.2f}M"
        click.echo(f"{row['name']:27} {params:>8} {row['default_input']:>22}  {', '.join(row['outputs'])}")


def _zoo_rows() -> list[dict[str, Any]]:
    from segexport.zoo import count_parameters, get_spec, list_models

    rows: list[dict[str, Any]] = []
    for name in list_models():
        spec = get_spec(name)
        image = spec.input_kind == "image"
        rows.append(
            {
                "name": name,
                "aliases": list(spec.aliases),
                "family": spec.family,
                "parameters": count_parameters(name),
                "num_classes": spec.default_num_classes,
                "default_input": (
                    f"{spec.default_size[0]}x{spec.default_size[1]}" if image else "Nx256x14x14 + N labels"
                ),
                "size_divisible_by": spec.stride if image else None,
                "inputs": list(spec.input_names),
                "outputs": list(spec.output_names),
                "description": spec.description,
            }
        )
    return rows


@main.command("train")
@model_option(required=True)
@data_option("'synthetic' or a folder with images/, masks/ and classes.txt.")
@click.option("--epochs", type=POSITIVE, default=10, show_default=True, help="Training epochs.")
@click.option(
    "--steps", "steps_per_epoch", type=POSITIVE, default=100, show_default=True, help="Steps per epoch."
)
@click.option("--batch", "batch_size", type=POSITIVE, default=8, show_default=True, help="Images per step.")
@size_option("Training crop HxW.", default="128x128", show_default=True)
@click.option(
    "--loss", default="ce+dice", show_default=True, help="Terms of ce, dice, focal, lovasz, boundary."
)
@click.option(
    "--lr", type=Float(min=0.0, min_open=True), default=2e-3, show_default=True, help="Learning rate."
)
@limit_option("Held-out images per evaluation.", 16)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed.")
@model_arg_option()
@click.option("--fp32-storage", is_flag=True, help="Store float32 weights (default: float16).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output .safetensors file.")
@force_option("Replace an existing checkpoint.")
@json_option()
def train(as_json: bool, fp32_storage: bool, **params: Any) -> None:
    """Train a zoo model (a helper for demos and fine-tuning), reporting held-out mIoU."""
    from segexport.training import TrainConfig
    from segexport.training import train as run_training

    config = TrainConfig(**params, fp16_storage=not fp32_storage)
    record = run_training(config, progress=progress)
    if as_json:
        echo_json(record)
    else:
        click.echo(
            f"wrote {config.out}: held-out mIoU {record['held_out_miou']:.4f} "
            f"in {record['train_seconds']:.0f} s"
        )


@main.command("eval")
@model_option(required=True)
@weights_option("Checkpoint path, or 'demo'.", required=True)
@data_option("'synthetic' (eval split) or a folder with images/, masks/ and classes.txt.")
@limit_option("Synthetic images to evaluate.", 16, dest="limit")
@size_option("Synthetic image size (default: the checkpoint's training size).")
@model_arg_option()
@json_option()
def evaluate_command(as_json: bool, model: str, **params: Any) -> None:
    """mIoU and per-class IoU of the PyTorch model on held-out data."""
    from segexport.training import evaluate_checkpoint

    report = evaluate_checkpoint(model, **params)
    if as_json:
        echo_json(report)
        return
    click.echo(
        f"{report['model']} on {report['data']} ({report['images']} images): mIoU {report['miou']:.4f}"
    )
    for name, iou in report["per_class_iou"].items():
        click.echo(f"  {name:>12}: {'-' if iou is None else f'{iou:.4f}'}")
