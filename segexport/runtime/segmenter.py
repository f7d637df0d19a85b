"""`Segmenter`: image in, mask out, at the image's own resolution. What pipelines embed.

It reads the artifact's manifest (size rule, normalisation, class names), picks the
best backend this machine runs (`segexport.runtime.backends`), and feeds the network the
tensors export and calibration saw: the same `resize` and `preprocess`, so that what runs
is what was verified. It imports no torch.

Thread safety: one `Segmenter` may be shared by threads. ONNX Runtime sessions run
calls concurrently; the TensorRT runner (one execution context, one CUDA stream) is
serialised by a lock. `stream()` runs its own worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segexport.errors import SegexportError
from segexport.runtime.artifacts import read_manifest
from segexport.runtime.backends import Selection, select_runner
from segexport.runtime.crf import DenseCRF
from segexport.runtime.geometry import RESIZE_MODES, Placement, SizeRule, mask_dtype, softmax
from segexport.runtime.masks import LabelledArray as LabelledArray  # re-exported: its old home
from segexport.runtime.masks import Mask, Probabilities
from segexport.runtime.media import default_palette
from segexport.runtime.preprocessing import read_rgb
from segexport.runtime.runners import Runner
from segexport.runtime.stream import Stream, StreamOptions
from segexport.runtime.stream import StreamItem as StreamItem  # re-exported: its old home

log = logging.getLogger("segexport.runtime")

COLOR_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation: probabilities averaged over input scales and horizontal flips."""

    scales: tuple[float, ...] = (0.75, 1.0, 1.25)
    flip: bool = True

    def views(self) -> list[tuple[float, bool]]:
        flips = (False, True) if self.flip else (False,)
        return [(float(scale), flipped) for scale in self.scales for flipped in flips]


def as_rgb(image: Any, color: str | None, convert: bool = False) -> np.ndarray:
    """A path, PIL image or numpy array as contiguous RGB uint8 [H, W, 3], or one clear error.

    Files and PIL images say their own colour order. Arrays do not, so `color` is
    required for them ("bgr" for OpenCV and PyAV's bgr24 frames). Float arrays are
    taken as [0, 1]. Grayscale and 4-channel arrays are converted only with `convert`.
    """
    if isinstance(image, (str, Path)):
        return read_rgb(Path(image))
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if not isinstance(image, np.ndarray):
        raise SegexportError(
            f"expected an image path, a PIL image or a numpy array, got {type(image).__name__}"
        )
    if color not in COLOR_ORDERS:
        raise SegexportError(
            "a numpy image needs its colour order: pass color='rgb' or color='bgr' "
            "(OpenCV and PyAV bgr24 frames are BGR)"
            if color is None
            else f"color must be 'rgb' or 'bgr', not {color!r}"
        )
    if image.ndim not in (2, 3):
        raise SegexportError(f"expected an image [H, W, 3], got an array of shape {image.shape}")
    if image.size == 0:
        raise SegexportError(f"empty image (shape {image.shape})")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in (1, 3, 4):
        raise SegexportError(f"expected 3 colour channels, got {channels} (shape {image.shape})")
    if channels != 3 and not convert:
        kind = "grayscale" if channels == 1 else "4-channel (RGBA/BGRA)"
        raise SegexportError(f"got a {kind} image of shape {image.shape}; pass convert=True to convert it")
    pixels = _as_uint8(image)
    if channels == 1:
        pixels = np.repeat(pixels.reshape(*pixels.shape[:2], 1), 3, axis=2)
    pixels = pixels[..., :3]
    if color == "bgr":
        pixels = pixels[..., ::-1]
    return np.ascontiguousarray(pixels)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise SegexportError(
            f"unsupported image dtype {image.dtype}; pass uint8 (0..255) or float (0..1) pixels"
        )
    if not np.isfinite(image).all():
        raise SegexportError("the image contains NaN or Inf values")
    low, high = float(image.min()), float(image.max())
    if low < 0 or high > 1:
        raise SegexportError(
            f"float image values span {low:g}..{high:g}; float pixels must be in 0..1 (or pass uint8)"
        )
    return (image.astype(np.float32) * 255 + 0.5).astype(np.uint8)


@dataclass
class _Prepared:
    """One image after pre-processing: a tensor per TTA view, and what post-processing needs."""

    index: int
    frame: Any
    placements: list[Placement]
    tensors: list[np.ndarray]
    rgb: np.ndarray | None = None  # kept for CRF refinement only
    outputs: list[np.ndarray] = field(default_factory=list)


class Segmenter:
    """Runs a segexport artifact on images; build it with `Segmenter.load`."""

    def __init__(
        self,
        runner: Runner,
        manifest: dict[str, Any],
        selection: Selection,
        resize: str = "fixed",
        tta: TTA | None = None,
        refine: str | DenseCRF | None = None,
        color: str | None = None,
        convert: bool = False,
    ) -> None:
        if resize not in RESIZE_MODES:
            raise SegexportError(f"unknown resize mode {resize!r}; use one of {', '.join(RESIZE_MODES)}")
        if color is not None and color not in COLOR_ORDERS:
            raise SegexportError(f"color must be 'rgb' or 'bgr', not {color!r}")
        self._runner: Runner | None = runner
        self.manifest = manifest
        self.selection = selection
        self.rule = SizeRule.from_manifest(manifest)
        self.resize = resize
        self.tta = tta
        self.refiner = _refiner(refine)
        self.color = color
        self.convert = convert
        self._input = str(manifest["inputs"][0]["name"])
        head = manifest.get("head")
        scores = head.get("scores") if isinstance(head, dict) else None
        self._output, self._head = _pick_output([str(o["name"]) for o in manifest["outputs"]], scores)
        self._preprocessing = dict(manifest["preprocessing"])
        model = manifest.get("model", {})
        self.class_names: tuple[str, ...] = tuple(model.get("class_names") or ())
        palette = manifest.get("palette")
        self.palette = np.asarray(palette, dtype=np.uint8) if palette else default_palette()
        self._views = tta.views() if tta else [(1.0, False)]
        if self._head == "mask" and (tta or self.refiner):
            raise SegexportError("TTA and CRF refinement need logits; this artifact outputs only a mask")
        if not self.rule.dynamic_size and any(scale != 1.0 for scale, _ in self._views):
            raise SegexportError(
                "TTA scales need an artifact with a dynamic input size; use TTA(scales=(1.0,))"
            )
        self._lock = threading.Lock() if not selection.backend.thread_safe else None

    @classmethod
    def load(
        cls,
        artifact_dir: str | Path,
        backend: str = "auto",
        precision: str = "auto",
        device: int = 0,
        threads: int | None = None,
        *,
        resize: str = "fixed",
        tta: TTA | None = None,
        refine: str | DenseCRF | None = None,
        color: str | None = None,
        convert: bool = False,
    ) -> Segmenter:
        """Open the best backend and precision this machine runs from the manifest's vouched files.

        `backend`: auto, tensorrt, onnxruntime-tensorrt, onnxruntime-cuda or onnxruntime-cpu;
        `precision`: auto, fp32, fp16 or int8. An explicit choice that cannot run here
        raises the reason. `color` is the default colour order of numpy images.
        """
        directory = Path(artifact_dir)
        manifest = read_manifest(directory)
        runner, selection = select_runner(directory, manifest, backend, precision, device, threads)
        try:
            segmenter = cls(runner, manifest, selection, resize, tta, refine, color, convert)
        except BaseException:
            _close_runner(runner)
            raise
        log.info("segexport: %s", segmenter.describe())
        return segmenter

    # ------------------------------------------------------------------ description

    @property
    def backend(self) -> str:
        return self.selection.backend.name

    @property
    def precision(self) -> str:
        return self.selection.precision

    @property
    def num_classes(self) -> int:
        return int(self.manifest.get("model", {}).get("num_classes") or len(self.class_names))

    @property
    def max_batch(self) -> int:
        return self.rule.batch[1]

    def summary(self) -> str:
        """One line: the backend and file that run, and why better ones were not taken."""
        return f"{self.selection.summary()}; resize={self.resize}"

    def describe(self) -> str:
        """What runs (backend, file, precision, geometry) and why better backends were not taken."""
        model = self.manifest.get("model", {}).get("name", "model")
        height, width = self.rule.export
        extras = "".join(
            [f", TTA {len(self._views)} views" if self.tta else "", ", CRF" if self.refiner else ""]
        )
        return (
            f"{model}: {self.selection.describe()}. resize={self.resize} "
            f"(export size {width}x{height}, stride {self.rule.stride}), batch up to {self.max_batch}{extras}"
        )

    # ------------------------------------------------------------------ inference

    def __call__(self, image: Any, color: str | None = None) -> Mask:
        """Class ids [H, W] for one image (a path, PIL image or array) at its own resolution."""
        return self.predict([image], color)[0]

    def probabilities(self, image: Any, color: str | None = None) -> Probabilities:
        """Class probabilities float32 [C, H, W] at the image's resolution."""
        if self._head == "mask":
            raise SegexportError(
                "this artifact outputs only a mask (an ArgMax head); it has no probabilities"
            )
        prepared = self._prepare(0, image, color, None)
        self._run([prepared])
        return Probabilities(self._probabilities(prepared), self.class_names, self.palette)

    def predict(self, images: Sequence[Any] | np.ndarray, color: str | None = None) -> list[Mask]:
        """Masks for a list of images or an [N, H, W, C] array, batched up to the artifact's max batch."""
        if isinstance(images, np.ndarray) and images.ndim != 4:
            raise SegexportError(
                f"predict takes a list of images or an [N, H, W, C] array, got shape {images.shape}; "
                "call the segmenter itself for one image"
            )
        prepared = [self._prepare(i, image, color, None) for i, image in enumerate(images)]
        self._run(prepared)
        return [self._mask(item) for item in prepared]

    def stream(
        self,
        frames: Iterable[Any],
        batch: int = 1,
        color: str | None = None,
        drop_frames: bool = False,
        queue_size: int = 4,
    ) -> Stream:
        """Segment a video: yields `(index, frame, mask)` in order while the next frames are
        decoded and pre-processed in a background thread. `drop_frames=True` (live
        sources) keeps only the newest waiting frame."""
        return Stream(self, frames, StreamOptions(batch, color, drop_frames, queue_size))

    def close(self) -> None:
        """Release the backend (GPU memory, CUDA streams); later calls raise."""
        runner, self._runner = self._runner, None
        _close_runner(runner)

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _prepare(self, index: int, image: Any, color: str | None, frame: Any) -> _Prepared:
        rgb = as_rgb(image, color or self.color, self.convert)
        placements, tensors = [], []
        for scale, flipped in self._views:
            placement = self.rule.place(rgb.shape[:2], self.resize, scale)
            view = np.ascontiguousarray(rgb[:, ::-1]) if flipped else rgb
            placements.append(placement)
            tensors.append(placement.tensor(view, self._preprocessing))
        return _Prepared(index, frame, placements, tensors, rgb if self.refiner else None)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        runner = self._runner
        if runner is None:
            raise SegexportError("this Segmenter is closed")
        if self._lock is None:
            return runner.infer({self._input: batch})[self._output]
        with self._lock:
            return runner.infer({self._input: batch})[self._output]

    def _run(self, items: Sequence[_Prepared]) -> None:
        """Fill each item's outputs, batching tensors of one shape up to the max batch."""
        jobs = [(item, view) for item in items for view in range(len(item.tensors))]
        for item in items:
            item.outputs = [np.empty(0)] * len(item.tensors)
        by_shape: dict[tuple[int, ...], list[tuple[_Prepared, int]]] = {}
        for item, view in jobs:
            by_shape.setdefault(item.tensors[view].shape, []).append((item, view))
        low, high = self.rule.batch
        for group in by_shape.values():
            for start in range(0, len(group), high):
                chunk = group[start : start + high]
                tensors = [item.tensors[view] for item, view in chunk]
                tensors += [tensors[-1]] * (low - len(tensors))  # fixed-batch artifacts: pad the batch
                outputs = self._infer(np.stack(tensors))
                for row, (item, view) in enumerate(chunk):
                    item.outputs[view] = outputs[row]
        for item in items:
            item.tensors = []  # free the inputs early: streams hold many items

    def _pipelined(self) -> Callable[[Iterable[_Prepared]], Iterator[_Prepared]] | None:
        """The runner's own stream with two frames in flight (TensorRT's `infer_stream`), where
        one frame is one inference (no TTA views, batch 1 accepted); None otherwise."""
        infer_stream = getattr(self._runner, "infer_stream", None)
        if infer_stream is None or len(self._views) != 1 or self.rule.batch[0] != 1:
            return None
        lock = self._lock or contextlib.nullcontext()

        def run(items: Iterable[_Prepared]) -> Iterator[_Prepared]:
            waiting: deque[_Prepared] = deque()

            def feeds() -> Iterator[dict[str, np.ndarray]]:
                for item in items:
                    waiting.append(item)
                    yield {self._input: item.tensors[0][None]}

            outputs_of = infer_stream(feeds())
            while True:
                with lock:  # one step: submit the next frame, collect the oldest
                    outputs = next(outputs_of, None)
                if outputs is None:
                    return
                item = waiting.popleft()
                item.outputs, item.tensors = [outputs[self._output][0]], []
                yield item

        return run

    def _probabilities(self, item: _Prepared) -> np.ndarray:
        total: np.ndarray | None = None
        for (_, flipped), placement, output in zip(self._views, item.placements, item.outputs, strict=True):
            probabilities = softmax(placement.restore_logits(output))
            if flipped:
                probabilities = probabilities[:, :, ::-1]
            total = probabilities if total is None else total + probabilities
        assert total is not None
        total /= len(self._views)
        if self.refiner is not None:
            assert item.rgb is not None
            total = self.refiner.refine(item.rgb, total)
        return np.ascontiguousarray(total, dtype=np.float32)

    def _mask(self, item: _Prepared) -> Mask:
        dtype = mask_dtype(self.num_classes)
        if self._head == "mask":
            labels = item.placements[0].restore_mask(item.outputs[0])
        elif len(self._views) == 1 and self.refiner is None:
            labels = item.placements[0].logits_to_mask(item.outputs[0])
        else:
            labels = np.argmax(self._probabilities(item), axis=0)
        item.outputs = []
        return Mask(labels.astype(dtype), self.class_names, self.palette)


def _close_runner(runner: Runner | None) -> None:
    """Engines hold GPU memory and a CUDA stream; ONNX Runtime sessions need no close."""
    close = getattr(runner, "close", None)
    if close is not None:
        close()


def _refiner(refine: str | DenseCRF | None) -> DenseCRF | None:
    if refine is None or isinstance(refine, DenseCRF):
        return refine
    if refine == "crf":
        return DenseCRF()
    raise SegexportError(f"unknown refinement {refine!r}; use 'crf' or None")


def _pick_output(names: list[str], scores: str | None = None) -> tuple[str, str]:
    """The output the segmenter reads and its kind: the class scores the manifest names
    (`head.scores`), else `logits`, else an ArgMax mask."""
    if scores is not None and scores in names:
        return scores, "logits"
    if "logits" in names:
        return "logits", "logits"
    if "mask" in names:
        return "mask", "mask"
    if len(names) == 1:
        return names[0], "logits"
    raise SegexportError(f"the artifact has outputs {', '.join(names)}; expected 'logits' or 'mask'")
