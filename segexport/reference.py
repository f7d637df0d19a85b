"""The PyTorch reference: the model an artifact came from, run as a `Runner`.

Every stage checks its artifact against this reference; `verify_runners` feeds both the
same seeded random inputs at several shapes, so a dynamic axis that only looks dynamic
(a size baked into the graph) fails with the runtime's message instead of crashing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segexport.compare import Tolerance, VerificationReport
from segexport.errors import SegexportError
from segexport.importers import build_imported, import_weights
from segexport.runtime import Runner
from segexport.runtime.artifacts import sha256_file
from segexport.runtime.files import FP32_ONNX
from segexport.runtime.judge import compare_on_feeds
from segexport.runtime.preprocessing import input_format, normalise_for, takes_raw_frames
from segexport.runtime.runners import open_onnx_runner
from segexport.shapes import InputShape
from segexport.sources import OutputChoice, ScoresAdapter, build_from_factory, load_user_weights
from segexport.sources.factory import state_digest
from segexport.weights import load_weights, resolve_weights
from segexport.zoo.registry import ModelSpec, create_model, get_spec

FOREIGN_SOURCES = ("python", "onnx")  # manifest `source.kind`s that no zoo name describes


def source_kind(manifest: dict[str, Any]) -> str | None:
    source = manifest.get("source")
    return str(source.get("kind")) if isinstance(source, dict) and source.get("kind") else None


def _unbuildable(**_options: Any) -> nn.Module:
    raise SegexportError("this artifact's model is not in the zoo; it is rebuilt from its source record")


def spec_for(manifest: dict[str, Any]) -> ModelSpec:
    """What the stages need to know of the artifact's model: the zoo's entry, or (a user's
    module, an adopted ONNX) one made from the manifest alone."""
    spec = _spec_without_format(manifest)
    prep = manifest.get("preprocessing")
    return spec if prep is None else dataclasses.replace(spec, input_format=input_format(prep))


def _spec_without_format(manifest: dict[str, Any]) -> ModelSpec:
    if source_kind(manifest) not in FOREIGN_SOURCES:
        return get_spec(manifest["model"]["name"])
    axes = manifest["dynamic_axes"]
    prep = manifest["preprocessing"]
    scores = (manifest.get("head") or {}).get("scores") or "logits"
    outputs = [str(o["name"]) for o in manifest["outputs"] if o["name"] != "mask"]
    return ModelSpec(
        manifest["model"]["name"],
        _unbuildable,
        str(manifest["source"]["kind"]),
        manifest["model"].get("description") or manifest["source"].get("class", ""),
        int(manifest["model"]["num_classes"]),
        tuple(outputs),
        stride=int(manifest.get("size_rule", {}).get("divisible_by", 1)),
        min_size=(axes["height"][0], axes["width"][0]),
        max_size=(axes["height"][1], axes["width"][1]),
        max_batch=axes["batch"][1],
        mean=tuple(prep["mean"]),
        std=tuple(prep["std"]),
        logits_outputs=(scores,),
    )


def reference_runner(
    manifest: dict[str, Any],
    directory: Path | None = None,
    threads: int | None = None,
    weights: str | Path | None = None,
    module: nn.Module | None = None,
    onnx_fallback: bool = False,
) -> Runner:
    """The reference every stage measures against: the PyTorch model (the zoo's, rebuilt from
    the recorded factory, or the `module` passed in), or the FP32 ONNX for an adopted ONNX.

    `onnx_fallback`: where a user's module cannot be rebuilt, the FP32 ONNX (verified against it
    at export) stands in; otherwise that case is refused saying what is needed.
    """
    kind = source_kind(manifest)
    if kind == "onnx":
        return _onnx_reference(manifest, directory, threads)
    spec = spec_for(manifest)
    if kind == "python":
        try:
            model = module if module is not None else _python_reference(manifest, weights)
        except SegexportError:
            if not onnx_fallback or directory is None:
                raise
            return _onnx_reference(manifest, directory, threads)  # verified against the module at export
        recorded = manifest["source"].get("state_sha256")
        if module is not None and recorded and state_digest(module) != recorded:
            raise SegexportError(
                "the module passed in has other weights than the one this artifact was exported from"
            )
        choice = OutputChoice.from_record(manifest["source"]["probe"]["output"])
        runner = TorchRunner(ScoresAdapter(model, choice), spec.output_names, threads)
        runner.name = f"pytorch:{type(model).__name__}"
        return frames_reference(runner, manifest)
    return frames_reference(
        TorchRunner(reference_model(manifest, weights), spec.output_names, threads), manifest
    )


def _onnx_reference(manifest: dict[str, Any], directory: Path | None, threads: int | None) -> Runner:
    if directory is None:
        raise SegexportError("the FP32 ONNX reference needs the artifact directory")
    return open_onnx_runner(directory, FP32_ONNX, manifest, threads)


def _python_reference(manifest: dict[str, Any], weights: str | Path | None) -> nn.Module:
    """A user's module rebuilt from the factory the CLI recorded, its weights checked by sha256."""
    source = manifest["source"]
    if not source.get("factory"):
        raise SegexportError(
            f"{manifest['model']['name']} was exported from a module in a Python process "
            f"({source.get('class')}): pass the module (API: module=...), re-export with "
            "--model FILE.py:FUNCTION, or compare against the FP32 ONNX (--against onnx)"
        )
    model, _ = build_from_factory(str(source["factory"]), dict(source.get("arguments") or {}))
    recorded = source.get("weights")
    if recorded:
        path = Path(weights if weights is not None else recorded["path"])
        if not path.is_file() or sha256_file(path) != recorded["sha256"]:
            raise SegexportError(
                f"{path}: the weights this artifact was exported from are missing or changed"
            )
        load_user_weights(model, path)
    if source.get("state_sha256") and state_digest(model) != source["state_sha256"]:
        raise SegexportError(
            f"{source['factory']} now builds other weights than at export (random initialisation? "
            "pass --weights at export); compare against the FP32 ONNX instead (--against onnx)"
        )
    return model.eval()


def reference_model(manifest: dict[str, Any], weights: str | Path | None = None) -> nn.Module:
    """The PyTorch model an artifact was exported from, rebuilt from its manifest.

    The checkpoint is the path the manifest records, or `weights` (a path or `demo`) when
    the artifact moved to another machine; either way its sha256 must be the recorded one.
    """
    info = manifest["model"]
    recorded = info.get("weights")
    if not recorded:
        raise SegexportError(
            f"{info['name']} was exported with random weights: its PyTorch reference cannot be rebuilt; "
            "export with --weights CKPT (or --weights demo)"
        )
    if recorded.get("format"):
        return _imported_reference(info, Path(recorded["path"] if weights is None else weights))
    path = Path(recorded["path"]) if weights is None else resolve_weights(info["name"], weights).path
    if not path.is_file() or sha256_file(path) != recorded["sha256"]:
        raise SegexportError(f"{path}: the checkpoint this artifact was exported from is missing or changed")
    model = create_model(info["name"], num_classes=info["num_classes"], **info.get("options", {}))
    load_weights(model, path)
    return model.eval()


def _imported_reference(info: dict[str, Any], path: Path) -> nn.Module:
    """Foreign weights (Hugging Face, mmseg, timm, ports) converted again, as at export."""
    recorded = info["weights"]
    imported = import_weights(path) if path.exists() else None
    if imported is None or imported.format != recorded["format"] or imported.sha256() != recorded["sha256"]:
        raise SegexportError(f"{path}: the weights this artifact was exported from are missing or changed")
    return build_imported(imported, info.get("options", {}), info["num_classes"])


def data_size(manifest: dict[str, Any]) -> tuple[int, int]:
    """The image size to check an artifact at: its checkpoint's training size, else its export size."""
    trained = manifest["model"].get("trained") or {}
    if "input_size" in trained:
        height, width = trained["input_size"]
        return int(height), int(width)
    _, height, width = (int(v) for v in manifest["export_shape"].split("x"))
    return height, width


class FramesRunner:
    """A float-NCHW reference (the PyTorch model) fed what a `uint8-nhwc` artifact takes: the raw
    frames, normalised here with the artifact's own recorded settings before the model reads them."""

    def __init__(self, inner: Runner, preprocessing: dict[str, Any]) -> None:
        self.inner = inner
        self.preprocessing = preprocessing
        self.name = inner.name

    @property
    def output_names(self) -> list[str]:
        return self.inner.output_names

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.inner.infer({**feeds, "image": normalise_for(self.preprocessing, feeds["image"])})


def frames_reference(runner: Runner, manifest: dict[str, Any]) -> Runner:
    """`runner` as the reference of this artifact: wrapped in a FramesRunner where the artifact
    takes raw frames and the runner is the float network."""
    prep = manifest.get("preprocessing")
    if prep is None or not takes_raw_frames(prep):
        return runner
    return FramesRunner(runner, prep)


class TorchRunner:
    """The PyTorch reference as a Runner; outputs are flattened in the spec's order."""

    def __init__(self, model: nn.Module, output_names: Sequence[str], threads: int | None = None):
        self.model = model.eval()
        self._output_names = list(output_names)
        self.threads = threads
        self.name = f"pytorch:{type(model).__name__}"

    @property
    def output_names(self) -> list[str]:
        return self._output_names

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                result = self.model(*(torch.from_numpy(v) for v in feeds.values()))
        finally:
            torch.set_num_threads(previous)
        outputs = flatten_outputs(result)
        return {n: o.numpy() for n, o in zip(self._output_names, outputs, strict=True)}


def flatten_outputs(result: Any) -> tuple[torch.Tensor, ...]:
    """A model's return value (tensor, tuple/list, dict) as a flat tuple of tensors."""
    if isinstance(result, torch.Tensor):
        return (result,)
    if isinstance(result, dict):
        result = list(result.values())
    flat: list[torch.Tensor] = []
    for item in result:
        flat.extend(flatten_outputs(item))
    return tuple(flat)


def verify_runners(
    spec: ModelSpec,
    num_classes: int,
    reference: Runner,
    candidate: Runner,
    shapes: Sequence[InputShape],
    tolerance: Tolerance,
    progress: Callable[[str], None] | None = None,
    seed: int = 0,
) -> VerificationReport:
    """Run both runners on the same seeded random inputs at every shape and compare."""
    generator = torch.Generator().manual_seed(seed)

    def cases() -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        for shape in shapes:  # generated lazily: the seeded stream stays as it was
            inputs = spec.example_inputs(shape, num_classes, generator)
            yield str(shape), {name: tensor.numpy() for name, tensor in inputs.items()}

    return compare_on_feeds(reference, candidate, cases(), tolerance, spec.logits_outputs, progress)
