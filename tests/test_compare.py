"""The comparator, and the two ways dynamic axes fail silently (platform notes)."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from segexport.compare import (
    DEFAULT_TOLERANCES,
    OutputStats,
    Tolerance,
    compare_arrays,
    default_tolerance,
    label_agreement,
)
from segexport.reference import TorchRunner, verify_runners
from segexport.runtime import OnnxRuntimeRunner
from segexport.runtime.files import judged_precision
from segexport.shapes import InputShape
from segexport.zoo.registry import ModelSpec


class TokenAttention(nn.Module):
    """A SegFormer-style block built on nn.MultiheadAttention, as users write it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Conv2d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return self.head(tokens.transpose(1, 2).reshape(batch, channels, height, width))


SPEC = ModelSpec(
    "token-attention", TokenAttention, "test", "test", 3, ("logits",), stride=4, logits_outputs=("logits",)
)


def _verify(model: nn.Module, path: Path, shapes: list[InputShape]):
    return verify_runners(
        SPEC, 3, TorchRunner(model, ["logits"]), OnnxRuntimeRunner(path), shapes, Tolerance()
    )


def _quiet_export(*args, **kwargs) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(*args, **kwargs)


def test_catches_sizes_baked_in_by_the_torchscript_exporter(tmp_path: Path) -> None:
    """Legacy export with 'dynamic' axes: it runs at the export shape, not at others."""
    torch.manual_seed(0)
    model = TokenAttention().eval()
    path = tmp_path / "legacy.onnx"
    _quiet_export(
        model,
        (torch.randn(1, 3, 32, 32),),
        str(path),
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}},
        opset_version=17,
    )
    report = _verify(model, path, [InputShape(1, 32, 32), InputShape(2, 32, 32), InputShape(1, 32, 48)])
    assert report.shapes[0].passed
    assert not report.passed
    assert not report.shapes[1].passed or not report.shapes[2].passed
    assert any("shape 2x32x32" in line or "shape 1x32x48" in line for line in report.failures())


def test_catches_a_batch_specialised_to_one(tmp_path: Path) -> None:
    """torch.export specialises an axis that is 1 in the example: batch 2 then fails."""
    torch.manual_seed(0)
    model = TokenAttention().eval()
    path = tmp_path / "static_batch.onnx"
    _quiet_export(
        model,
        (torch.randn(1, 3, 32, 32),),
        str(path),
        dynamo=True,
        input_names=["image"],
        output_names=["logits"],
        opset_version=18,
    )
    report = _verify(model, path, [InputShape(1, 32, 32), InputShape(2, 32, 32)])
    assert report.shapes[0].passed
    assert not report.shapes[1].passed
    assert report.shapes[1].error


def test_rel_l2_and_agreement_figures() -> None:
    reference = np.zeros((1, 2, 2, 2), dtype=np.float32)
    reference[0, 0] = [[3.0, 3.0], [3.0, 3.0]]
    candidate = reference.copy()
    candidate[0, 1, 0, 0] = 4.0  # flips one of four argmax positions
    result = compare_arrays("logits", reference, candidate, Tolerance(), labels=True)
    assert result.max_abs == pytest.approx(4.0)
    assert result.rel_l2 == pytest.approx(4.0 / 6.0)
    assert result.agreement == pytest.approx(0.75)
    assert not result.passed


def test_nonfinite_outputs_fail() -> None:
    reference = np.ones((1, 3, 2, 2), dtype=np.float32)
    candidate = reference.copy()
    candidate[0, 0, 0, 0] = np.nan
    result = compare_arrays("logits", reference, candidate, Tolerance(max_rel_l2=math.inf), labels=True)
    assert result.nonfinite == 1
    assert not result.passed


def test_identical_outputs_pass() -> None:
    reference = np.random.default_rng(0).normal(size=(2, 4, 3, 3)).astype(np.float32)
    result = compare_arrays("logits", reference, reference.copy(), Tolerance(), labels=True)
    assert result.passed and result.rel_l2 == 0.0 and result.agreement == 1.0


def test_shape_mismatch_fails() -> None:
    result = compare_arrays("x", np.zeros((1, 2)), np.zeros((1, 3)), Tolerance(), labels=False)
    assert not result.passed


def test_single_channel_agreement_uses_sign() -> None:
    reference = np.array([[[[1.0, -1.0]]]])
    candidate = np.array([[[[0.5, 0.5]]]])
    assert label_agreement(reference, candidate) == 0.5


def test_accumulated_figures_are_those_of_the_whole_data_set() -> None:
    """Two batches give the figures of their concatenation, not the mean of per-batch ratios."""
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(4, 3, 8, 8)).astype(np.float32)
    noise = np.array([0.01, 0.01, 0.5, 0.5]).reshape(4, 1, 1, 1)
    candidate = (reference + rng.normal(size=reference.shape) * noise).astype(np.float32)
    truth = reference.argmax(1)
    truth[:, 0, 0] = 255  # ignored
    stats = OutputStats("logits", labels=True)
    agreements = [stats.add(reference[i : i + 2], candidate[i : i + 2], truth[i : i + 2]) for i in (0, 2)]
    result = stats.result(Tolerance(max_rel_l2=1.0))
    whole = compare_arrays("logits", reference, candidate, Tolerance(max_rel_l2=1.0), labels=True)
    assert result.shape == [4, 3, 8, 8]
    diff = (candidate - reference).astype(np.float64)
    assert result.rel_l2 == pytest.approx(np.linalg.norm(diff) / np.linalg.norm(reference), rel=1e-6)
    assert result.rel_l2 == pytest.approx(whole.rel_l2, rel=1e-9)
    assert result.max_abs == pytest.approx(np.abs(diff).max(), rel=1e-6)
    assert result.mean_abs == pytest.approx(np.abs(diff).mean(), rel=1e-6)
    norms = np.linalg.norm(reference) * np.linalg.norm(candidate)
    cosine = float(reference.ravel().astype(np.float64) @ candidate.ravel()) / norms
    assert result.cosine == pytest.approx(cosine, rel=1e-6)
    matches = reference.argmax(1) == candidate.argmax(1)
    assert result.agreement == pytest.approx(matches.mean())
    per_image = np.concatenate([a for a in agreements if a is not None])
    np.testing.assert_allclose(per_image, matches.reshape(4, -1).mean(1))
    assert per_image[:2].min() > per_image[2:].max()  # the noisy half agrees less
    assert result.miou_reference == pytest.approx(1.0)  # truth is the reference's argmax
    assert result.miou is not None and result.miou < 1.0
    assert result.miou_vs_reference is not None and result.miou_vs_reference < 1.0
    assert result.passed and result.reasons == []


def test_reference_nan_and_tolerance_bounds_are_reasons() -> None:
    reference = np.ones((1, 2, 2, 2), dtype=np.float32)
    reference[0, 0, 0, 0] = np.inf
    candidate = np.ones_like(reference)
    candidate[0, 1, 1, 1] = 3.0
    result = compare_arrays("logits", reference, candidate, Tolerance(1e-4, 0.99, max_abs=1.0), labels=True)
    assert result.nonfinite == 0 and result.reference_nonfinite == 1
    assert not result.passed
    assert [r.split(" ")[0] for r in result.reasons] == ["the", "rel", "max", "argmax"]
    nan_only = compare_arrays("x", np.ones(3), np.full(3, np.nan), Tolerance(), labels=False)
    assert nan_only.nan == 3 and math.isnan(nan_only.rel_l2) and not nan_only.passed


def test_quarter_resolution_outputs_are_scored_against_subsampled_labels() -> None:
    reference = np.zeros((1, 2, 2, 2), dtype=np.float32)
    reference[0, 1, 0, 0] = 1.0
    truth = np.zeros((1, 8, 8), dtype=np.int64)
    truth[0, :4, :4] = 1
    stats = OutputStats("logits", labels=True)
    stats.add(reference, reference.copy(), truth)
    assert stats.result(Tolerance()).miou == pytest.approx(1.0)


def test_default_tolerances_by_file_name() -> None:
    assert default_tolerance("model.onnx") == DEFAULT_TOLERANCES["fp32"]
    assert default_tolerance("model.int8.onnx") == DEFAULT_TOLERANCES["int8"]
    assert default_tolerance("model.int8.engine") == DEFAULT_TOLERANCES["int8"]
    assert default_tolerance("model.engine") == DEFAULT_TOLERANCES["fp16"]
    assert judged_precision("model.int8-cpu.onnx") == "int8"  # the CPU variant is judged as INT8
    assert [judged_precision(n) for n in ("model.onnx", "model.fp16.onnx", "x.engine", "calib.json")] == [
        "fp32",
        "fp16",
        "engine",
        None,
    ]
    loose = DEFAULT_TOLERANCES["fp32"].override(max_rel_l2=1e-2, max_abs=0.5)
    assert loose == Tolerance(max_rel_l2=1e-2, min_agreement=0.999, max_abs=0.5)
