"""Recording PyTorch's outputs into the artifact (reference.npz) at export, or afterwards.

The inputs are the synthetic eval-split pictures at the size the model is judged at (with
their labels when the model was trained on those scenes: then mIoU is judged too) and
seeded random pictures at the export's check shapes, all uint8 so the file stays small;
the outputs are PyTorch's FP32 values, kept exact (see docs/reference.md for why not
float16). Sets that would push the file over its cap are left out, and said so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segexport.data import evaluation_images
from segexport.errors import SegexportError
from segexport.export.graph import MASK_OUTPUT, MASK_TYPES
from segexport.reference import data_size, reference_runner, source_kind, spec_for
from segexport.runtime import Runner, preprocess_for, resize
from segexport.runtime.artifacts import begin_stage, read_manifest, record_files
from segexport.runtime.files import REFERENCE_FILE
from segexport.runtime.recorded import MAX_REFERENCE_BYTES, RecordedReference, RecordedSet, write_reference
from segexport.shapes import InputShape, parse_shape

Progress = Callable[[str], None]
REFERENCE_IMAGES = 8  # eval-split pictures recorded (the engine check's and verify's images)
_SHAPE_SEED = 1000


class WithMask:
    """The PyTorch reference with the head's outputs: `mask` is torch's argmax over classes."""

    def __init__(self, reference: Runner, logits: str, head: str, mask_dtype: str) -> None:
        self._reference = reference
        self._logits, self._head = logits, head
        self._dtype = MASK_TYPES[mask_dtype][1]
        self.name = reference.name

    @property
    def output_names(self) -> list[str]:
        kept = [n for n in self._reference.output_names if not (self._head == "mask" and n == self._logits)]
        return [*kept, MASK_OUTPUT]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._reference.infer(feeds)
        outputs[MASK_OUTPUT] = outputs[self._logits].argmax(axis=1).astype(self._dtype)
        return {name: outputs[name] for name in self.output_names}


def with_head(reference: Runner, head: dict[str, Any]) -> Runner:
    """The PyTorch reference giving the outputs of an artifact with this head record."""
    if head["kind"] == "logits":
        return reference
    mask = head["mask"]
    return WithMask(reference, mask["argmax_of"], head["kind"], mask["dtype"])


def _run(runner: Runner, images: np.ndarray, preprocessing: dict[str, Any]) -> dict[str, np.ndarray]:
    """PyTorch on each picture alone (bounded memory), outputs stacked along the batch."""
    per_image = [
        runner.infer({"image": preprocess_for(preprocessing, images[i : i + 1])}) for i in range(len(images))
    ]
    return {name: np.concatenate([out[name] for out in per_image]) for name in runner.output_names}


def _fitting_size(manifest: dict[str, Any], size: tuple[int, int], image_bytes: int) -> tuple[int, int]:
    """`size`, or the largest size of the same aspect inside the artifact's range and size rule
    whose outputs for one image stay under half the cap (large exports with many classes)."""
    if image_bytes <= MAX_REFERENCE_BYTES // 2:
        return size
    scale = (MAX_REFERENCE_BYTES // 2 / image_bytes) ** 0.5
    step = int(manifest.get("size_rule", {}).get("divisible_by", 1) or 1)
    axes = manifest["dynamic_axes"]
    low = (int(axes["height"][0]), int(axes["width"][0]))
    return tuple(  # type: ignore[return-value]
        max(lowest, int(side * scale) // step * step) for side, lowest in zip(size, low, strict=True)
    )


def _output_bytes(outputs: dict[str, np.ndarray]) -> int:
    return sum(int(value.nbytes) for value in outputs.values())


def record_reference(
    runner: Runner, manifest: dict[str, Any], shapes: Sequence[InputShape], say: Progress
) -> RecordedReference:
    """PyTorch's outputs on the reference inputs; `runner` gives the manifest's outputs."""
    outputs = [tensor["name"] for tensor in manifest["outputs"]]
    if sorted(runner.output_names) != sorted(outputs):
        raise SegexportError(f"the reference gives {runner.output_names}, the artifact declares {outputs}")
    prep = manifest["preprocessing"]
    classes = list(manifest["model"]["class_names"])
    spec = spec_for(manifest)
    labels = [name for name in outputs if name in spec.logits_outputs]
    reference = RecordedReference(manifest["model"]["name"], classes, prep, outputs, labels)
    size = data_size(manifest)
    data = evaluation_images("synthetic", classes, REFERENCE_IMAGES, size)
    pictures = [data.items[i] for i in range(data.count)]
    images = np.stack([resize(picture, size) for picture, _ in pictures])
    first = _run(runner, images[:1], prep)
    fitted = _fitting_size(manifest, size, _output_bytes(first))
    if fitted != size:  # one image's scores alone would pass half the cap: record smaller ones
        say(f"      reference: images recorded at {fitted[0]}x{fitted[1]} (at {size[0]}x{size[1]} "
            f"one image's outputs are {_output_bytes(first) >> 20} MiB, over the cap)")  # fmt: skip
        size = fitted
        images = np.stack([resize(picture, size) for picture, _ in pictures])
        first = _run(runner, images[:1], prep)
    count = max(1, min(len(images), MAX_REFERENCE_BYTES // 2 // max(_output_bytes(first), 1)))
    truth = None
    if data.labelled:
        stacked = np.stack([resize(mask, size, labels=True) for _, mask in pictures[:count]])
        truth = stacked.astype(np.uint8 if stacked.max(initial=0) < 256 else np.int32)
    source = f"synthetic eval split, {count} images at {size[0]}x{size[1]}"
    recorded = _run(runner, images[:count], prep)
    reference.sets.append(RecordedSet("images", "images", images[:count], recorded, truth, source))
    budget = MAX_REFERENCE_BYTES - _output_bytes(recorded) - int(images[:count].nbytes)
    for index, shape in enumerate(shapes):
        assert shape.height is not None and shape.width is not None
        estimate = _output_bytes(first) * shape.batch * shape.height * shape.width // (size[0] * size[1])
        if estimate > budget:
            say(f"      reference: shape {shape} left out ({estimate >> 20} MiB of outputs, over the cap)")
            continue
        rng = np.random.default_rng(_SHAPE_SEED + index)
        random = rng.integers(0, 256, (shape.batch, shape.height, shape.width, 3), dtype=np.uint8)
        outputs_at = _run(runner, random, prep)
        budget -= _output_bytes(outputs_at) + int(random.nbytes)
        reference.sets.append(
            RecordedSet(f"shape{index}", "shape", random, outputs_at, None, "seeded random")
        )
    return reference


def recorded_shapes(manifest: dict[str, Any]) -> list[InputShape]:
    """The shapes the FP32 export was verified at, read back from its manifest."""
    shapes = []
    for result in manifest.get("verification", {}).get("fp32", {}).get("shapes", []):
        shapes.append(parse_shape(str(result["shape"])))  # BxHxW, as verify_runners names them
    return shapes


def add_reference(directory: Path, weights: str | None, force: bool, say: Progress) -> dict[str, Any]:
    """Record reference.npz into an existing artifact (one made before it existed)."""
    manifest = read_manifest(directory)
    if REFERENCE_FILE in manifest["files"] and not force:
        raise SegexportError(f"{directory / REFERENCE_FILE} already exists; pass --force to replace it")
    if "preprocessing" not in manifest:
        raise SegexportError(
            f"{directory}: {manifest['model']['name']} takes no images; no reference to record"
        )
    begin_stage(directory, manifest, [REFERENCE_FILE], "reference.npz is written there")
    # The one door to an artifact's reference (zoo, a user's factory, an adopted ONNX); an adopted
    # ONNX is its own reference, head included.
    runner = reference_runner(manifest, directory, weights=weights)
    if source_kind(manifest) != "onnx":
        runner = with_head(runner, manifest["head"])
    say(f"recording PyTorch's outputs into {directory / REFERENCE_FILE}")
    reference = record_reference(runner, manifest, recorded_shapes(manifest), say)
    size = write_reference(directory, reference)
    say(f"{REFERENCE_FILE}: {len(reference.sets)} set(s), {size / 1024:.0f} KiB")
    return record_files(directory, manifest, [REFERENCE_FILE])
