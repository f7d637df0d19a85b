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

from segexport.runtime import OnnxRuntimeRunner
from segexport.shapes import InputShape
from segexport.verify import Tolerance, TorchRunner, compare_arrays, label_agreement, verify_runners
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
