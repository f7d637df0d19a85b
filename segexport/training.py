"""A minimal, honest training loop and the evaluation that reports mIoU.

A helper for the demo checkpoints and for fine-tuning, not a training framework:
AdamW with warm-up and cosine decay, AMP on a GPU, mIoU on a held-out split each epoch.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segexport.data import IGNORE_INDEX, LabelledImages, Resized, SyntheticScenes, open_dataset
from segexport.errors import SegexportError
from segexport.losses import parse_loss
from segexport.reference import flatten_outputs
from segexport.runtime import preprocess
from segexport.runtime.metrics import IoUReport, confusion_matrix, iou_report
from segexport.runtime.outputs import check_output
from segexport.weights import checkpoint_record, load_weights, resolve_weights, save_checkpoint
from segexport.zoo import create_model, get_spec
from segexport.zoo.registry import ModelSpec

Progress = Callable[[str], None]


def _crop_or_pad(
    image: np.ndarray, labels: np.ndarray, size: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random crop to `size`; pad (labels with ignore) where the image is smaller."""
    height, width = size
    pad_h, pad_w = max(0, height - image.shape[0]), max(0, width - image.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
        labels = np.pad(labels, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    top = int(rng.integers(0, image.shape[0] - height + 1))
    left = int(rng.integers(0, image.shape[1] - width + 1))
    return image[top : top + height, left : left + width], labels[top : top + height, left : left + width]


def _batch(
    dataset: LabelledImages, indices: Sequence[int], size: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for index in indices:
        image, label = _crop_or_pad(*dataset[index], size, rng)
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        images.append(image)
        labels.append(label)
    return np.stack(images), np.stack(labels)


def pad_to_stride(images: np.ndarray, stride: int) -> np.ndarray:
    """Zero-pad NCHW inputs at the bottom/right to the model's size rule."""
    height, width = images.shape[2:]
    pad_h, pad_w = -height % stride, -width % stride
    if not (pad_h or pad_w):
        return images
    return np.pad(images, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)))


def predict_labels(model: nn.Module, spec: ModelSpec, images: np.ndarray, device: torch.device) -> np.ndarray:
    """Label maps [N, H, W] for RGB uint8 images [N, H, W, 3] (any size: padded to the stride)."""
    height, width = images.shape[1:3]
    tensor = pad_to_stride(preprocess(images, spec.mean, spec.std), spec.stride)
    with torch.inference_mode():
        logits = flatten_outputs(model(torch.from_numpy(tensor).to(device)))[0]
    return logits[:, :, :height, :width].argmax(1).cpu().numpy()


def evaluate(
    model: nn.Module,
    spec: ModelSpec,
    dataset: LabelledImages,
    batch_size: int = 8,
    device: torch.device | None = None,
) -> IoUReport:
    """mIoU and per-class IoU of the model's argmax against the dataset's labels."""
    device = device or next(model.parameters()).device
    model.eval()
    num_classes = len(dataset.class_names)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []

    def flush() -> None:
        nonlocal confusion
        if images:
            predictions = predict_labels(model, spec, np.stack(images), device)
            confusion += confusion_matrix(np.stack(labels), predictions, num_classes)
            images.clear()
            labels.clear()

    for index in range(len(dataset)):
        image, label = dataset[index]
        # Folder images may differ in size: a batch holds images of one size.
        if images and (image.shape != images[0].shape or len(images) == batch_size):
            flush()
        images.append(image)
        labels.append(label)
    flush()
    return iou_report(confusion, dataset.class_names)


@dataclass
class TrainConfig:
    model: str
    out: Path
    data: str = "synthetic"
    epochs: int = 10
    steps_per_epoch: int = 100
    batch_size: int = 8
    size: tuple[int, int] = (128, 128)
    loss: str = "ce+dice"
    lr: float = 2e-3
    weight_decay: float = 1e-2
    eval_images: int = 16
    seed: int = 0
    model_options: dict[str, Any] = field(default_factory=dict)
    fp16_storage: bool = True
    force: bool = False


def _learning_rate(step: int, total: int, peak: float) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def _is_checkpoint(path: Path) -> bool:
    """A checkpoint segexport wrote (its training record in the header): `--force` may replace it."""
    try:
        return checkpoint_record(path) is not None
    except SegexportError:
        return False


def train(config: TrainConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Train, evaluate each epoch, save a state_dict with its recipe; returns the record."""
    say = progress or (lambda _message: None)
    spec = get_spec(config.model)
    if spec.input_kind != "image":
        raise SegexportError(f"{spec.name} is not an image model; `segexport train` trains semantic models")
    for value, name in (
        (config.epochs, "--epochs"),
        (config.steps_per_epoch, "--steps"),
        (config.batch_size, "--batch"),
    ):
        if value < 1:
            raise SegexportError(f"{name} must be >= 1, got {value}")
    spec.check_size(*config.size)
    data_folder = None if config.data == "synthetic" else Path(config.data)
    check_output(
        config.out, config.force, directory=False, reads=[data_folder], option="--out", owned=_is_checkpoint
    )
    total_samples = config.epochs * config.steps_per_epoch * config.batch_size
    train_set = open_dataset(config.data, "train", total_samples, config.size)
    eval_set = Resized(open_dataset(config.data, "eval", config.eval_images, config.size), config.size)
    class_names = tuple(train_set.class_names)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = create_model(spec.name, num_classes=len(class_names), **config.model_options).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    criterion = parse_loss(config.loss)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    total_steps = config.epochs * config.steps_per_epoch
    history = []
    started = time.perf_counter()
    step = 0
    for epoch in range(config.epochs):
        model.train()
        losses = []
        for _ in _steps(config.steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}"):
            if isinstance(train_set, SyntheticScenes):
                indices: Sequence[int] = range(step * config.batch_size, (step + 1) * config.batch_size)
            else:
                indices = rng.integers(0, len(train_set), config.batch_size).tolist()
            images, labels = _batch(train_set, indices, config.size, rng)
            inputs = torch.from_numpy(preprocess(images, spec.mean, spec.std)).to(device)
            target = torch.from_numpy(np.ascontiguousarray(labels)).to(device)
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, total_steps, config.lr)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = flatten_outputs(model(inputs))[0]
            loss = criterion(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            step += 1
        report = evaluate(model, spec, eval_set, device=device)
        history.append(
            {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), "miou": round(report.miou, 4)}
        )
        say(f"epoch {epoch + 1}/{config.epochs}: loss {np.mean(losses):.4f}, held-out mIoU {report.miou:.4f}")
    seconds = time.perf_counter() - started
    record = {
        "model": spec.name,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "input_size": list(config.size),
        "held_out_miou": history[-1]["miou"],
        "held_out_images": config.eval_images,
        "per_class_iou": report.per_class,
        "train_seconds": round(seconds, 1),
        "device": torch.cuda.get_device_name()
        if use_amp
        else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "config": {**asdict(config), "out": str(config.out), "size": list(config.size)},
        "history": history,
    }
    save_checkpoint(model.cpu(), config.out, record, fp16=config.fp16_storage, force=config.force)
    return record


def _steps(count: int, label: str) -> Any:
    """range(count) with a progress bar on a terminal, plain otherwise."""
    from tqdm import tqdm

    return tqdm(range(count), desc=label, file=sys.stderr, leave=False, disable=None)


def evaluate_checkpoint(
    model_name: str,
    weights: str | Path,
    data: str = "synthetic",
    limit: int = 16,
    size: tuple[int, int] | None = None,
    model_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`segexport eval`: load a checkpoint (or `demo`) and report IoU on held-out data."""
    spec = get_spec(model_name)
    resolved = resolve_weights(spec.name, weights)
    record = resolved.record or {}
    if size is None:
        height, width = record.get("input_size", spec.default_size)
        size = (int(height), int(width))
    spec.check_size(*size)
    dataset = Resized(open_dataset(data, "eval", limit, size), size)
    trained_names = resolved.class_names
    if trained_names and list(dataset.class_names) != trained_names:
        raise SegexportError(
            f"{resolved.path} was trained on classes {trained_names}; "
            f"the data has {list(dataset.class_names)}"
        )
    model = create_model(spec.name, num_classes=len(dataset.class_names), **(model_options or {}))
    load_weights(model, resolved.path)
    report = evaluate(model.eval(), spec, dataset)
    return {
        "model": spec.name,
        "weights": str(resolved.path),
        "data": data,
        "images": len(dataset),
        "size": list(size),
        **report.to_dict(),
    }
