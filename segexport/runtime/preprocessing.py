"""Pre-processing: the one path from image files and arrays to the tensors a model takes.

Training, calibration, evaluation, verification and deployment all call these functions,
so every stage feeds the tensors the others saw (PIL's bilinear and OpenCV's differ by
tens of grey levels on a downscale: one implementation, not two that nearly agree).
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segexport.errors import SegexportError, first_line


def preprocess(
    images: np.ndarray, mean: Sequence[float], std: Sequence[float], scale: float = 1 / 255
) -> np.ndarray:
    """RGB uint8 [H, W, 3] or [N, H, W, 3] -> normalised float32 [N, 3, H, W].

    The one preprocessing used by training, calibration, evaluation and deployment, so
    that every stage sees the tensors the others saw.
    """
    batch = images[None] if images.ndim == 3 else images
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise SegexportError(f"expected RGB images [N, H, W, 3], got shape {tuple(images.shape)}")
    mean_array = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std_array = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    chw = batch.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(scale)
    return np.ascontiguousarray((chw - mean_array) / std_array)


def preprocess_for(preprocessing: Mapping[str, Any], images: np.ndarray) -> np.ndarray:
    """`preprocess` with an artifact's recorded settings: its manifest's `preprocessing`
    section (or the Triton ensemble's copy of it), so calibration, verify, bench, the runtime
    and Triton read mean, std and scale the same way."""
    return preprocess(images, preprocessing["mean"], preprocessing["std"], float(preprocessing["scale"]))


def open_regular_file(path: Path, what: str = "image") -> Any:
    """A binary handle on `path`, refused in one line unless it is a regular file.

    The open does not block (a FIFO named `x.png` would hang a plain open) and the check is on
    the open descriptor, so what is read is what was checked.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SegexportError(f"{path}: no such {what}") from None
    except OSError as error:
        raise SegexportError(f"{path}: cannot read the {what} ({error.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SegexportError(f"{path}: not a regular file (a FIFO, device or socket); refusing to read it")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def check_regular_file(path: Path, what: str = "image") -> None:
    """Refuse (one line) a path that is not a regular file, without opening it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SegexportError(f"{path}: no such {what}") from None
    except OSError as error:
        raise SegexportError(f"{path}: cannot read the {what} ({error.strerror})") from None
    if not stat.S_ISREG(mode):
        raise SegexportError(f"{path}: not a regular file (a FIFO, device or socket); refusing to read it")


@contextlib.contextmanager
def open_image(path: Path, what: str = "image") -> Iterator[Any]:
    """A loaded PIL image; unreadable files and decompression bombs are one-line refusals.

    Pillow refuses images over twice its pixel limit (a 110 KB PNG can claim 30000x30000
    and ask for 2.7 GB) and only warns between one and two times it: both are refused here,
    naming the file, before the pixels are decoded.
    """
    from PIL import Image, UnidentifiedImageError

    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings(), open_regular_file(path, what) as handle:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle) as image:
                image.load()
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        size = f" ({first_line(error)})" if limit is None else f" (over Pillow's limit of {limit:,} pixels)"
        raise SegexportError(f"{path}: {what} too large, refusing to decode it{size}") from None
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise SegexportError(f"{path}: unreadable {what} ({error})") from error


def read_rgb(path: Path) -> np.ndarray:
    """Any PIL-readable image as RGB uint8 [H, W, 3]: grayscale, RGBA, palette, 16-bit.

    Oriented as viewers show it: an EXIF orientation tag (a phone's portrait JPEG) is
    applied, so masks line up with the picture users see. Arrays are never rotated.
    """
    from PIL import ImageOps

    with open_image(path) as loaded:
        image = ImageOps.exif_transpose(loaded)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16/32-bit grayscale: scale the full range to 8 bits, not clip it.
            array = np.asarray(image, dtype=np.float64)
            peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
            gray = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize(array: np.ndarray, size: tuple[int, int], labels: bool = False) -> np.ndarray:
    """An RGB image (bilinear) or a label map (nearest) at `size` (H, W)."""
    if array.shape[:2] == size:
        return array
    from PIL import Image

    if labels:
        resized = Image.fromarray(array.astype(np.int32)).resize((size[1], size[0]), Image.Resampling.NEAREST)
        return np.asarray(resized).astype(np.int64)
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), Image.Resampling.BILINEAR))
