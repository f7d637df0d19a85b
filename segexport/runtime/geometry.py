"""Where an image sits in the network input, and how outputs get back to the image's pixels.

A `SizeRule` is what the manifest promises (export size, the dynamic range, the stride
the sizes must divide by, the batch range). A `Placement` is one image's transform:
resized to `scaled`, padded at the bottom and right to `padded`. Padding only at the
bottom/right keeps the inverse a plain crop (centred letterboxes are where peers shipped
off-by-one shifts). Outputs come back with `resize_logits`/`logits_to_mask`, the one
post-processing the runtime and the serving ensembles share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from segexport.errors import SegexportError
from segexport.runtime.preprocessing import pad_input, preprocess_for, resize

RESIZE_MODES = ("fixed", "keep-aspect", "native")


def _range(manifest: dict[str, Any], axis: str, default: tuple[int, int]) -> tuple[int, int]:
    low, high = manifest.get("dynamic_axes", {}).get(axis, default)
    return int(low), int(high)


@dataclass(frozen=True)
class SizeRule:
    """The input sizes an artifact accepts, from its manifest."""

    export: tuple[int, int]
    min_size: tuple[int, int]
    max_size: tuple[int, int]
    stride: int
    batch: tuple[int, int]

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> SizeRule:
        try:
            batch, height, width = (int(v) for v in str(manifest["export_shape"]).split("x"))
        except (KeyError, ValueError) as error:
            raise SegexportError("the manifest has no usable export_shape (BxHxW)") from error
        heights = _range(manifest, "height", (height, height))
        widths = _range(manifest, "width", (width, width))
        return cls(
            export=(height, width),
            min_size=(heights[0], widths[0]),
            max_size=(heights[1], widths[1]),
            stride=max(1, int(manifest.get("size_rule", {}).get("divisible_by", 1))),
            batch=_range(manifest, "batch", (batch, batch)),
        )

    @property
    def dynamic_size(self) -> bool:
        return self.min_size != self.max_size

    def _snap(self, length: float, axis: int) -> int:
        """The stride multiple nearest `length` that lies in the range of `axis`."""
        low = math.ceil(self.min_size[axis] / self.stride) * self.stride
        high = self.max_size[axis] // self.stride * self.stride
        return int(min(max(round(length / self.stride) * self.stride, low), high))

    def _pad(self, length: int, axis: int) -> int:
        """The smallest accepted size >= `length` (a stride multiple, at least the minimum)."""
        padded = max(math.ceil(length / self.stride) * self.stride, self.min_size[axis])
        padded = math.ceil(padded / self.stride) * self.stride
        # A static artifact's size need not be a stride multiple: pad to exactly that size.
        return self.max_size[axis] if length <= self.max_size[axis] < padded else padded

    def place(self, shape: tuple[int, int], mode: str = "fixed", scale: float = 1.0) -> Placement:
        """The placement of an image of `shape` (H, W) under a resize mode, at a TTA scale.

        fixed: resized to the export size (what calibration and verification saw).
        keep-aspect: scaled to fit the export size without distortion, padded to the stride.
        native: padded only; refused when the padded size is outside the artifact's range.
        """
        height, width = shape
        # At scale 1 the export size itself, even where a static artifact's size is no stride multiple.
        box = (
            self.export
            if scale == 1.0
            else (self._snap(self.export[0] * scale, 0), self._snap(self.export[1] * scale, 1))
        )
        if mode == "fixed":
            return Placement(shape, box, box)
        if mode == "keep-aspect":
            ratio = min(box[0] / height, box[1] / width)
            scaled = (
                min(box[0], max(1, round(height * ratio))),
                min(box[1], max(1, round(width * ratio))),
            )
        elif mode == "native":
            scaled = (max(1, round(height * scale)), max(1, round(width * scale)))
        else:
            raise SegexportError(f"unknown resize mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")
        padded = (self._pad(scaled[0], 0), self._pad(scaled[1], 1))
        if any(p > high for p, high in zip(padded, self.max_size, strict=True)):
            raise SegexportError(
                f"a {width}x{height} image needs a {padded[1]}x{padded[0]} input with resize={mode!r}, "
                f"outside what the artifact accepts (up to {self.max_size[1]}x{self.max_size[0]}); "
                "use resize='keep-aspect' or 'fixed'"
            )
        return Placement(shape, scaled, padded)


@dataclass(frozen=True)
class Placement:
    """One image's way into the network input and back: resize to `scaled`, pad to `padded`."""

    original: tuple[int, int]
    scaled: tuple[int, int]
    padded: tuple[int, int]

    def tensor(self, rgb: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
        """RGB uint8 [H, W, 3] -> the graph's input for one image (normalised float32 [3, padH,
        padW], or uint8 [padH, padW, 3] raw frames), padded with the mean colour."""
        return pad_input(
            preprocessing, preprocess_for(preprocessing, resize(rgb, self.scaled))[0], self.padded
        )

    def _crop(self, logits: np.ndarray) -> np.ndarray:
        """The scores of the image's pixels, without the padding: at the input's resolution or
        at 1/s of it (a model whose scores stay at a lower resolution, `upsample="none"`)."""
        rows = round(self.scaled[0] * logits.shape[-2] / self.padded[0])
        cols = round(self.scaled[1] * logits.shape[-1] / self.padded[1])
        return logits[:, : max(1, rows), : max(1, cols)]

    def restore_logits(self, logits: np.ndarray) -> np.ndarray:
        """[C, padH/s, padW/s] network logits -> [C, H, W] at the original image's pixels."""
        return resize_logits(self._crop(logits), self.original)

    def logits_to_mask(self, logits: np.ndarray) -> np.ndarray:
        """[C, padH/s, padW/s] network logits -> class ids [H, W] at the original image's pixels."""
        return logits_to_mask(self._crop(logits), self.original)

    def restore_mask(self, mask: np.ndarray) -> np.ndarray:
        """[padH, padW] class ids (an ArgMax head's output) -> int64 [H, W], nearest neighbour."""
        cropped = np.ascontiguousarray(self._crop(mask[None])[0])
        return resize(cropped, self.original, labels=True)


def _bilinear_taps(out_length: int, in_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of half-pixel bilinear sampling (align_corners=False)."""
    position = (np.arange(out_length, dtype=np.float64) + 0.5) * (in_length / out_length) - 0.5
    position = np.clip(position, 0, in_length - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, in_length - 1)
    return low, high, (position - low).astype(np.float32)


def resize_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize logits [..., C, h, w] to [..., C, H, W] (float32).

    Half-pixel centres without antialiasing, the convention of `F.interpolate(...,
    align_corners=False)` and ONNX Resize, so that a mask computed here matches one
    computed in PyTorch. Resize logits (or probabilities), never a label map: averaging
    class ids invents classes at boundaries.
    """
    logits = np.asarray(logits, dtype=np.float32)
    height, width = logits.shape[-2:]
    if (height, width) == tuple(size):
        return logits
    low, high, weight = _bilinear_taps(size[0], height)
    rows = logits[..., low, :] * (1 - weight)[:, None] + logits[..., high, :] * weight[:, None]
    low, high, weight = _bilinear_taps(size[1], width)
    return rows[..., low] * (1 - weight) + rows[..., high] * weight


def mask_dtype(num_classes: int) -> np.dtype:
    """uint8 class ids up to 256 classes (what palette PNGs hold), int32 beyond."""
    return np.dtype(np.uint8 if num_classes <= 256 else np.int32)


def logits_to_mask(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Logits [C, h, w] -> class ids [H, W]: the argmax of the bilinearly resized logits, computed
    on the smallest tensor that gives the same mask.

    A resized pixel's logits are a convex combination of its four source pixels' logits, so
    where all four have the same argmax class that class wins the combination too: those
    pixels take the class from the argmax at the logits' own size, and only the pixels between
    differing classes (a few percent) are interpolated, with `resize_logits`' arithmetic. The
    result is `argmax(resize_logits(logits, size))` (tests/test_pipeline_stages.py), for a
    fraction of the work on every frame of a stream.
    """
    logits = np.asarray(logits, dtype=np.float32)
    dtype = mask_dtype(logits.shape[-3])
    height, width = logits.shape[-2:]
    small = np.argmax(logits, axis=-3).astype(dtype)  # small ids: cheap gathers below
    if (height, width) == tuple(size):
        return small
    row_low, row_high, row_weight = _bilinear_taps(size[0], height)
    col_low, col_high, col_weight = _bilinear_taps(size[1], width)
    top, bottom = small[row_low], small[row_high]
    labels = top[:, col_low]
    mixed = (labels != top[:, col_high]) | (labels != bottom[:, col_low]) | (labels != bottom[:, col_high])
    ys, xs = np.nonzero(mixed)
    if ys.size:
        rl, rh, wr = row_low[ys], row_high[ys], row_weight[ys]
        cl, ch, wc = col_low[xs], col_high[xs], col_weight[xs]
        left = logits[..., rl, cl] * (1 - wr) + logits[..., rh, cl] * wr
        right = logits[..., rl, ch] * (1 - wr) + logits[..., rh, ch] * wr
        labels[ys, xs] = np.argmax(left * (1 - wc) + right * wc, axis=-2)
    return labels


def softmax(logits: np.ndarray, axis: int = -3) -> np.ndarray:
    """Class probabilities along the channel axis (float32, numerically stable)."""
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return (shifted / shifted.sum(axis=axis, keepdims=True)).astype(np.float32, copy=False)
