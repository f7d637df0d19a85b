"""Images and label masks: a deterministic synthetic scene generator and folder readers.

No dataset can be downloaded here, and precision checks need in-distribution images
with labels, so segexport brings its own: textured shapes whose class is decided by
texture and shape, never by colour (every object gets random colours). numpy only, so
the runtime side can use it without torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from segexport.errors import SegexportError
from segexport.runtime.media import list_images
from segexport.runtime.preprocessing import open_image, preprocess_for, random_input, read_rgb, resize

IGNORE_INDEX = 255
SYNTHETIC_CLASSES = ("background", "stripes", "checkers", "dots", "noise", "gradient", "rings")
# Seeds of the documented splits; each image i of a split uses seed (split_seed, i).
SPLIT_SEEDS = {"train": 0, "calibration": 1, "eval": 2}


@dataclass(frozen=True)
class SyntheticScenes:
    """Image i of split s is a pure function of (s, i, size): reproducible anywhere."""

    split: str = "train"
    length: int = 64
    size: tuple[int, int] = (128, 128)

    def __post_init__(self) -> None:
        if self.split not in SPLIT_SEEDS:
            raise SegexportError(f"unknown split {self.split!r}; use one of {sorted(SPLIT_SEEDS)}")

    @property
    def class_names(self) -> tuple[str, ...]:
        return SYNTHETIC_CLASSES

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 [H, W, 3], labels int64 [H, W])."""
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([SPLIT_SEEDS[self.split], index])
        return render_scene(rng, *self.size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return (self[i] for i in range(len(self)))


def _texture(
    kind: int, rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """A [H, W] pattern in [0, 1] whose structure (not colour) identifies the class."""
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(5, 10)
    u = xs * np.cos(angle) + ys * np.sin(angle)
    v = -xs * np.sin(angle) + ys * np.cos(angle)
    name = SYNTHETIC_CLASSES[kind]
    if name == "stripes":
        return (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    if name == "checkers":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if name == "dots":
        cu = (u / period) % 1 - 0.5
        cv = (v / period) % 1 - 0.5
        return (cu**2 + cv**2 < 0.08).astype(np.float32)
    if name == "noise":
        return (rng.random(ys.shape) > 0.5).astype(np.float32)
    if name == "gradient":
        # A full dark-to-bright ramp across the object itself, not across the image.
        inside = u[mask]
        span = max(float(np.ptp(inside)), 1.0)
        return np.clip((u - inside.min()) / span, 0, 1).astype(np.float32)
    # rings: concentric circles around the object's own centre, so that their curvature
    # shows inside the object (rings centred far away look like stripes)
    cy, cx = float(ys[mask].mean()), float(xs[mask].mean())
    radius = np.hypot(ys - cy, xs - cx)
    return (np.sin(2 * np.pi * radius / period) > 0).astype(np.float32)


def _shape_mask(
    rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, height: int, width: int
) -> np.ndarray:
    scale = rng.uniform(0.15, 0.4) * min(height, width)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    kind = rng.integers(3)
    if kind == 0:  # ellipse
        ry, rx = scale * rng.uniform(0.6, 1.2), scale * rng.uniform(0.6, 1.2)
        return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    angle = rng.uniform(0, np.pi)
    u = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
    v = -(xs - cx) * np.sin(angle) + (ys - cy) * np.cos(angle)
    if kind == 1:  # rotated rectangle
        return (np.abs(u) <= scale * rng.uniform(0.6, 1.3)) & (np.abs(v) <= scale * rng.uniform(0.5, 1.0))
    # triangle: three half-planes
    inside = np.ones_like(u, dtype=bool)
    for corner in range(3):
        theta = angle + corner * 2 * np.pi / 3
        inside &= (xs - cx) * np.cos(theta) + (ys - cy) * np.sin(theta) <= scale * 0.7
    return inside


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    # Background: smooth, muted colour field plus clutter strokes (class 0).
    coarse = (128 + rng.uniform(-60, 60, size=(4, 4, 3))).astype(np.float32)
    gy = np.linspace(0, 3, height)[:, None]
    gx = np.linspace(0, 3, width)[None, :]
    y0, x0 = np.floor(gy).astype(int).clip(0, 2), np.floor(gx).astype(int).clip(0, 2)
    fy, fx = (gy - y0)[..., None], (gx - x0)[..., None]
    image = (
        coarse[y0, x0] * (1 - fy) * (1 - fx)
        + coarse[y0 + 1, x0] * fy * (1 - fx)
        + coarse[y0, x0 + 1] * (1 - fy) * fx
        + coarse[y0 + 1, x0 + 1] * fy * fx
    ).astype(np.float32)
    for _ in range(rng.integers(2, 6)):
        angle = rng.uniform(0, np.pi)
        offset = rng.uniform(-max(height, width), max(height, width))
        line = np.abs(xs * np.cos(angle) + ys * np.sin(angle) - offset) < rng.uniform(0.5, 1.5)
        image[line] = _random_colour(rng)
    labels = np.zeros((height, width), dtype=np.int64)
    # Objects, painted in order: later ones occlude earlier ones.
    for _ in range(rng.integers(2, 6)):
        kind = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        mask = _shape_mask(rng, ys, xs, height, width)
        if mask.sum() < 16:
            continue
        pattern = _texture(kind, rng, ys, xs, mask)[..., None]
        low, high = _random_colour(rng), _random_colour(rng)
        while np.abs(high - low).sum() < 120:  # keep the texture visible
            high = _random_colour(rng)
        image[mask] = (low + (high - low) * pattern)[mask]
        labels[mask] = kind
    image += rng.normal(0, rng.uniform(2, 8), size=image.shape).astype(np.float32)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8), labels


# --------------------------------------------------------------------------- folders


def read_mask(path: Path) -> np.ndarray:
    """A palette or grayscale PNG of class indices (255 = ignore) as int64 [H, W]."""
    with open_image(path, "mask") as image:
        if image.mode not in ("P", "L", "I", "I;16"):
            raise SegexportError(f"{path}: mask mode {image.mode} is not a palette or grayscale index image")
        return np.asarray(image, dtype=np.int64)


@dataclass(frozen=True)
class FolderDataset:
    """images/NAME.ext + masks/NAME.png, as VOC/Cityscapes-style exports lay them out."""

    images: Sequence[Path]
    masks: Sequence[Path]
    class_names: tuple[str, ...]

    @classmethod
    def from_dirs(cls, images_dir: Path, masks_dir: Path, class_names: Sequence[str]) -> FolderDataset:
        images = list_images(images_dir, "images")
        by_stem = {p.stem: p for p in list_images(masks_dir, "masks")}
        missing = [p.name for p in images if p.stem not in by_stem]
        if missing:
            raise SegexportError(f"no mask in {masks_dir} for {', '.join(missing[:5])}")
        return cls(images, [by_stem[p.stem] for p in images], tuple(class_names))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = read_rgb(self.images[index]), read_mask(self.masks[index])
        if image.shape[:2] != mask.shape:
            raise SegexportError(
                f"{self.images[index].name}: image is {image.shape[1]}x{image.shape[0]} but its mask "
                f"is {mask.shape[1]}x{mask.shape[0]}"
            )
        valid = mask != IGNORE_INDEX
        if valid.any() and int(mask[valid].max()) >= len(self.class_names):
            raise SegexportError(
                f"{self.masks[index].name}: label {int(mask[valid].max())} >= {len(self.class_names)} classes"
            )
        return image, mask


@dataclass(frozen=True)
class ImageFolder:
    """Images without labels, for calibration."""

    images: Sequence[Path]

    @classmethod
    def from_dir(cls, folder: Path) -> ImageFolder:
        return cls(list_images(folder, "calibration images"))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:
        return read_rgb(self.images[index])


class LabelledImages(Protocol):
    @property
    def class_names(self) -> tuple[str, ...]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class Resized:
    """A labelled set seen at the model's size: accuracy stages run every image at the size
    the model was trained for (a 9000x9000 photo would otherwise run at full resolution)."""

    dataset: LabelledImages
    size: tuple[int, int]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.dataset.class_names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, labels = self.dataset[index]
        return resize(image, self.size), resize(labels, self.size, labels=True)


def open_dataset(data: str, split: str, length: int, size: tuple[int, int]) -> LabelledImages:
    """`synthetic` (the documented split) or a folder holding `images/` and `masks/`."""
    if data == "synthetic":
        return SyntheticScenes(split, length, size)
    root = Path(data)
    if not root.is_dir():
        raise SegexportError(f"--data {data!r} is neither 'synthetic' nor a directory")
    names_file = root / "classes.txt"
    if not names_file.is_file():
        raise SegexportError(f"{root}: needs classes.txt (one class name per line) beside images/ and masks/")
    names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    return FolderDataset.from_dirs(root / "images", root / "masks", names)


# --------------------------------------------------------------------------- evaluation data


@dataclass(frozen=True)
class EvalBatch:
    first: int  # index of the batch's first image
    inputs: np.ndarray  # what the graph takes ([B, 3, H, W] float32, or raw frames), as the artifact records
    truth: np.ndarray | None  # [B, H, W] labels, when the data has them


@dataclass(frozen=True)
class EvaluationImages:
    """The images quantize, verify and bench judge an artifact on, at the model's size.

    One reader for every stage, so they all see the same pictures: the synthetic eval split,
    a labelled folder (its classes checked against the model once, here), a folder of images
    without labels, or seeded random inputs.
    """

    source: str
    size: tuple[int, int]
    count: int
    labelled: bool
    note: str | None = None
    items: Any = None  # index -> RGB uint8, or (RGB, labels) when labelled; None for random

    def batches(self, batch_size: int, preprocessing: Mapping[str, Any]) -> Iterator[EvalBatch]:
        """Preprocessed inputs (and labels) in batches; random inputs are seeded."""
        rng = np.random.default_rng(0)
        for first in range(0, self.count, batch_size):
            indices = range(first, min(first + batch_size, self.count))
            if self.items is None:
                yield EvalBatch(first, random_input(preprocessing, len(indices), self.size, rng), None)
                continue
            items = [self.items[i] for i in indices]
            pictures = [item[0] if isinstance(item, tuple) else item for item in items]
            rgb = np.stack([resize(picture, self.size) for picture in pictures])
            truth = None
            if self.labelled:
                truth = np.stack([resize(item[1], self.size, labels=True) for item in items])
            yield EvalBatch(first, preprocess_for(preprocessing, rgb), truth)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "images": self.count,
            "size": list(self.size),
            "labels": self.labelled,
            "note": self.note,
        }


def evaluation_images(
    data: str, class_names: Sequence[str], count: int, size: tuple[int, int], *, need_labels: bool = False
) -> EvaluationImages:
    """`synthetic`, `random`, a labelled folder (images/, masks/, classes.txt) or a folder of
    images; `need_labels` refuses what has no ground truth (bench scores mIoU)."""
    classes = tuple(class_names)
    if data == "random":
        found = EvaluationImages(data, size, count, False)
    elif data == "synthetic":
        labelled = classes == SYNTHETIC_CLASSES
        note = None if labelled else "no ground truth: the model's classes are not the synthetic scenes'"
        found = EvaluationImages(data, size, count, labelled, note, SyntheticScenes("eval", count, size))
    else:
        root = Path(data)
        if (root / "masks").is_dir() or (root / "classes.txt").is_file():
            dataset = open_dataset(data, "eval", count, size)
            if len(dataset.class_names) != len(classes):
                names = len(dataset.class_names)
                raise SegexportError(
                    f"{root}: classes.txt names {names} classes; the model has {len(classes)}"
                )
            found = EvaluationImages(data, size, min(count, len(dataset)), True, None, dataset)
        elif root.is_dir():
            images = ImageFolder.from_dir(root / "images" if (root / "images").is_dir() else root)
            note = "no ground truth: the folder has images only"
            found = EvaluationImages(data, size, min(count, len(images)), False, note, images)
        else:
            raise SegexportError(f"--data {data!r} is neither synthetic, random nor a directory")
    if need_labels and not found.labelled:
        why = found.note or "no ground truth"
        raise SegexportError(f"--data {data}: {why} (a labelled folder has images/, masks/ and classes.txt)")
    if found.count == 0:
        raise SegexportError(f"--data {data}: no images")
    return found
