"""The PyTorch reference recorded at export: `reference.npz`, written and read without pickle.

An engine is built on the device, where PyTorch is the hardest thing to install; the
artifact therefore carries PyTorch's FP32 outputs on a small fixed input set, so that any
runner can be judged there (`segexport.runtime.judge`). The file is a plain `.npz` of
numeric arrays plus one JSON array (`meta`), loaded with `allow_pickle=False`, vouched by
the manifest like every other file and refused when it names other classes or
preprocessing than the manifest.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segexport.errors import SegexportError
from segexport.runtime.artifacts import atomic_write, vouched_bytes
from segexport.runtime.files import REFERENCE_FILE

FORMAT = 1
# The cap on reference.npz (compressed): beyond it the export records fewer sets, never more.
MAX_REFERENCE_BYTES = 8 << 20
# How to add a reference to an artifact made before it existed.
ADD_ONE = (
    "add one with `segexport reference --artifacts {directory}` (or re-export with `segexport onnx --force`)"
)


@dataclass
class RecordedSet:
    """One batch of recorded inputs (RGB uint8, NHWC) and PyTorch's outputs for them.

    `kind` is `images` (in-distribution pictures, with `truth` labels when the model was
    trained on them) or `shape` (seeded random pictures at one of the export's check shapes).
    """

    key: str
    kind: str
    images: np.ndarray
    outputs: dict[str, np.ndarray]
    truth: np.ndarray | None = None
    source: str = ""

    @property
    def shape(self) -> str:
        batch, height, width, _ = self.images.shape
        return f"{batch}x3x{height}x{width}"

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "shape": self.shape, "source": self.source}


@dataclass
class RecordedReference:
    """What reference.npz holds: the sets, the outputs' names, and what they were recorded for."""

    model: str
    class_names: list[str]
    preprocessing: dict[str, Any]
    output_names: list[str]
    label_outputs: list[str]
    sets: list[RecordedSet] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "class_names": self.class_names,
            "preprocessing": self.preprocessing,
            "outputs": self.output_names,
            "labels": self.label_outputs,
            "sets": [s.describe() for s in self.sets],
            "truth": [s.key for s in self.sets if s.truth is not None],
        }

    @property
    def images(self) -> RecordedSet | None:
        return next((s for s in self.sets if s.kind == "images"), None)


def _arrays(reference: RecordedReference) -> dict[str, np.ndarray]:
    meta = json.dumps(reference.meta(), sort_keys=True).encode()
    arrays = {"meta": np.frombuffer(meta, dtype=np.uint8)}
    for recorded in reference.sets:
        arrays[f"{recorded.key}_images"] = recorded.images
        if recorded.truth is not None:
            arrays[f"{recorded.key}_truth"] = recorded.truth
        for index, name in enumerate(reference.output_names):
            arrays[f"{recorded.key}_out{index}"] = recorded.outputs[name]
    return arrays


def encode_reference(reference: RecordedReference) -> bytes:
    """The compressed .npz bytes (numeric arrays only: loadable with allow_pickle=False)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, allow_pickle=False, **_arrays(reference))
    return buffer.getvalue()


def write_reference(directory: Path, reference: RecordedReference) -> int:
    """Write reference.npz into `directory` (the caller vouches for it); returns its size."""
    data = encode_reference(reference)
    if len(data) > MAX_REFERENCE_BYTES:
        raise SegexportError(
            f"{REFERENCE_FILE}: {len(data)} bytes is over the {MAX_REFERENCE_BYTES >> 20} MiB cap"
        )
    atomic_write(directory / REFERENCE_FILE, lambda temp: temp.write_bytes(data))
    return len(data)


def read_reference(directory: Path, manifest: dict[str, Any]) -> RecordedReference:
    """The artifact's recorded reference, vouched for and checked against its manifest.

    Every problem is one SegexportError line: missing (with how to add one), not vouched,
    altered, over the cap, pickled, malformed, or recorded for another model's classes,
    preprocessing or outputs.
    """
    path = directory / REFERENCE_FILE
    if REFERENCE_FILE not in manifest["files"]:
        why = "exists but is not listed in manifest.json" if path.exists() else "is missing"
        raise SegexportError(
            f"{path}: {why}: this artifact has no recorded PyTorch reference; "
            + ADD_ONE.format(directory=directory)
        )
    entry = manifest["files"][REFERENCE_FILE]
    if (
        isinstance(entry, dict)
        and isinstance(entry.get("bytes"), int)
        and entry["bytes"] > MAX_REFERENCE_BYTES
    ):
        raise SegexportError(
            f"{path}: {entry['bytes']} bytes is over the {MAX_REFERENCE_BYTES >> 20} MiB cap"
        )
    data = vouched_bytes(directory, REFERENCE_FILE, manifest)
    return decode_reference(data, path, manifest)


def decode_reference(data: bytes, path: Path, manifest: dict[str, Any]) -> RecordedReference:
    """Parse and check the bytes of a reference file (see `read_reference`)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise SegexportError(f"{path}: holds pickled objects; refusing to load it") from None
        raise SegexportError(f"{path}: not a numpy .npz file ({error})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise SegexportError(f"{path}: not a numpy .npz file ({error})") from None
    return _checked(arrays, path, manifest)


def _fail(path: Path, problem: str) -> SegexportError:
    return SegexportError(f"{path}: {problem}; refusing it (re-record it with `segexport reference`)")


def _checked(arrays: dict[str, np.ndarray], path: Path, manifest: dict[str, Any]) -> RecordedReference:
    meta_array = arrays.get("meta")
    if meta_array is None or meta_array.dtype != np.uint8 or meta_array.ndim != 1:
        raise _fail(path, "has no meta record")
    try:
        meta = json.loads(meta_array.tobytes())
    except ValueError:
        raise _fail(path, "its meta record is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(
            path, f"format {meta.get('format') if isinstance(meta, dict) else None!r} is not {FORMAT}"
        )
    model = manifest["model"]
    if meta.get("model") != model["name"] or meta.get("class_names") != list(model["class_names"]):
        raise _fail(path, f"was recorded for {meta.get('model')!r} with other classes than the manifest's")
    if meta.get("preprocessing") != manifest.get("preprocessing"):
        raise _fail(path, "was recorded with other preprocessing than the manifest's")
    outputs = [tensor["name"] for tensor in manifest["outputs"]]
    if meta.get("outputs") != outputs or not set(meta.get("labels", [])) <= set(outputs):
        raise _fail(path, f"records outputs {meta.get('outputs')!r}, the manifest declares {outputs!r}")
    ranks = {tensor["name"]: len(tensor["shape"]) for tensor in manifest["outputs"]}
    reference = RecordedReference(
        model["name"], list(model["class_names"]), meta["preprocessing"], outputs, list(meta["labels"])
    )
    truth_keys = set(meta.get("truth", []))
    for described in meta.get("sets", []):
        key = str(described.get("key"))
        images = arrays.get(f"{key}_images")
        if images is None or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise _fail(path, f"set {key}: images must be uint8 [B, H, W, 3]")
        batch = images.shape[0]
        recorded = RecordedSet(
            key, str(described.get("kind")), images, {}, source=str(described.get("source"))
        )
        for index, name in enumerate(outputs):
            output = arrays.get(f"{key}_out{index}")
            if output is None:
                raise _fail(path, f"set {key}, output {name}: missing")
            numeric = output.dtype == np.float32 or np.issubdtype(output.dtype, np.integer)
            if not numeric or output.ndim != ranks[name] or output.shape[0] != batch:
                got = f"{output.dtype} {list(output.shape)}"
                raise _fail(
                    path,
                    f"set {key}, output {name}: got {got}, expected float32 or ids of rank "
                    f"{ranks[name]} and batch {batch}",
                )
            recorded.outputs[name] = output
        if key in truth_keys:
            truth = arrays.get(f"{key}_truth")
            if truth is None or truth.shape != images.shape[:3] or not np.issubdtype(truth.dtype, np.integer):
                raise _fail(path, f"set {key}: truth labels must be integers [B, H, W]")
            recorded.truth = truth
        reference.sets.append(recorded)
    if not reference.sets:
        raise _fail(path, "holds no recorded sets")
    return reference
