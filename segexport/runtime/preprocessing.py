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
    # NCHW while still uint8 (a quarter of the bytes to move), then the float steps in place in
    # that order: the same float32 values as `(x * scale - mean) / std` on the transposed view,
    # at a fourteenth of the time (a 512x512 frame: 7.8 -> 0.5 ms).
    chw = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).astype(np.float32)
    chw *= np.float32(scale)
    chw -= mean_array
    chw /= std_array
    return chw


# What an artifact's image input takes (the manifest's `preprocessing.input_format`), one row per
# format: the layout, and whether the graph normalises inside (then it takes the uint8 frames
# themselves). `uint8-nhwc` (`segexport onnx --input-format uint8-nhwc`) takes raw RGB frames: a
# GPU runner uploads a quarter of the bytes and the host does no float conversion.
INPUT_FORMATS: dict[str, dict[str, Any]] = {
    "float-nchw": {"layout": "NCHW", "normalised_in_graph": False},
    "uint8-nhwc": {"layout": "NHWC", "normalised_in_graph": True},
}
DEFAULT_INPUT_FORMAT = "float-nchw"


def graph_normalises(name: str) -> bool:
    """Whether a graph of this input format takes raw uint8 frames and normalises them itself."""
    return bool(INPUT_FORMATS[name]["normalised_in_graph"])


def input_format(preprocessing: Mapping[str, Any]) -> str:
    """The artifact's input format; manifests written before the option take float NCHW."""
    return str(preprocessing.get("input_format", DEFAULT_INPUT_FORMAT))


def takes_raw_frames(preprocessing: Mapping[str, Any]) -> bool:
    """Whether the artifact's graph takes raw uint8 frames [N, H, W, 3] (and normalises inside)."""
    return graph_normalises(input_format(preprocessing))


def preprocess_for(preprocessing: Mapping[str, Any], images: np.ndarray) -> np.ndarray:
    """What the artifact's graph takes for RGB uint8 images, with its recorded settings (its
    manifest's `preprocessing` section, or the Triton ensemble's copy of it), so calibration,
    verify, bench, the runtime and Triton feed every graph the same way: normalised float32
    NCHW, or the frames themselves ([N, H, W, 3] uint8) where the graph normalises inside."""
    if takes_raw_frames(preprocessing):
        batch = images[None] if images.ndim == 3 else images
        if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
            raise SegexportError(
                f"expected RGB uint8 images [N, H, W, 3], got {batch.dtype} {tuple(images.shape)}"
            )
        return np.ascontiguousarray(batch)
    return normalise_for(preprocessing, images)


def normalise_for(preprocessing: Mapping[str, Any], images: np.ndarray) -> np.ndarray:
    """`preprocess` with the recorded mean, std and scale, whatever the graph takes: the float
    tensor a network without the in-graph normalisation (a PyTorch reference) reads."""
    return preprocess(images, preprocessing["mean"], preprocessing["std"], float(preprocessing["scale"]))


def input_shape(
    preprocessing: Mapping[str, Any], batch: int, size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The graph input's shape for `batch` images of `size` (H, W): NCHW, or NHWC for raw frames."""
    if takes_raw_frames(preprocessing):
        return (batch, *size, 3)
    return (batch, 3, *size)


def spatial_axes(preprocessing: Mapping[str, Any]) -> tuple[int, int]:
    """Where height and width sit in the graph input's shape (NCHW: 2, 3; NHWC: 1, 2)."""
    return (1, 2) if INPUT_FORMATS[input_format(preprocessing)]["layout"] == "NHWC" else (2, 3)


def random_input(
    preprocessing: Mapping[str, Any], batch: int, size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Seeded random graph input when there are no images: N(0, 1) after normalisation, or
    uniformly random frames."""
    shape = input_shape(preprocessing, batch, size)
    if takes_raw_frames(preprocessing):
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.normal(size=shape).astype(np.float32)


def to_pixels(preprocessing: Mapping[str, Any], tensor: np.ndarray) -> np.ndarray:
    """One image of the graph's input back to RGB uint8 [H, W, 3] (for pictures of what ran)."""
    if takes_raw_frames(preprocessing):
        return np.asarray(tensor, dtype=np.uint8)
    mean = np.asarray(preprocessing["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(preprocessing["std"], dtype=np.float32).reshape(3, 1, 1)
    chw = (tensor * std + mean) / np.float32(preprocessing["scale"])
    return np.clip(chw.transpose(1, 2, 0) + 0.5, 0, 255).astype(np.uint8)


def pad_value(preprocessing: Mapping[str, Any]) -> np.ndarray:
    """What padding holds in the graph's input: 0 after normalisation (the mean colour), or for
    raw frames the mean colour rounded to whole pixel values (within half a grey level)."""
    if takes_raw_frames(preprocessing):
        mean = np.asarray(preprocessing["mean"], dtype=np.float64) / float(preprocessing["scale"])
        return np.clip(np.round(mean), 0, 255).astype(np.uint8)
    return np.zeros(3, dtype=np.float32)


def pad_input(preprocessing: Mapping[str, Any], tensor: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One image's graph input ([3, h, w] or [h, w, 3]) padded at the bottom and right to `size`."""
    nhwc = takes_raw_frames(preprocessing)
    height, width = tensor.shape[:2] if nhwc else tensor.shape[1:]
    if (height, width) == size:
        return tensor
    fill = pad_value(preprocessing)
    if nhwc:
        padded = np.empty((*size, 3), dtype=tensor.dtype)
        padded[...] = fill
        padded[:height, :width] = tensor
        return padded
    padded = np.zeros((3, *size), dtype=tensor.dtype)
    padded[:, :height, :width] = tensor
    return padded


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
