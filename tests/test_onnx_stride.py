"""The size rule of a user's module holds on the exported ONNX, not only in PyTorch.

A module that runs at any size in PyTorch can export to a graph that only holds at multiples
of a larger stride (smp's U-Net: ONNX Runtime's GatherND fails off a multiple of 32). The
ONNX Runtime here is made to fail off a multiple of 8, as such a graph would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import segexport
from segexport.errors import SegexportError
from segexport.export import stage as export_stage
from segexport.export import stride as stride_check
from segexport.runtime import OnnxRuntimeRunner
from segexport.shapes import DynamicRange, InputShape


class _OnlyMultiplesOf8(OnnxRuntimeRunner):
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        height, width = feeds["image"].shape[-2:]
        if height % 8 or width % 8:
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : GatherND invalid index")
        return super().infer(feeds)


def _any_size() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()


def test_the_stride_rises_until_the_onnx_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stride_check, "OnnxRuntimeRunner", _OnlyMultiplesOf8)
    manifest: dict[str, Any] = segexport.export(_any_size(), size=(64, 64), out=tmp_path / "a")  # type: ignore[operator]
    probe = manifest["source"]["probe"]
    assert probe["stride"] == 8 and manifest["size_rule"] == {"divisible_by": 8}
    check = probe["onnx_stride_check"]
    assert [r["stride"] for r in check["rejected"]] == [1, 2, 4]
    assert "GatherND" in check["rejected"][0]["failure"] and check["shape"] == "1x72x72"
    assert "1x72x72" in [s["shape"] for s in manifest["verification"]["fp32"]["shapes"]]


def test_an_off_stride_shape_is_verified(tmp_path: Path) -> None:
    manifest: dict[str, Any] = segexport.export(_any_size(), size=(64, 64), out=tmp_path / "a")  # type: ignore[operator]
    assert manifest["source"]["probe"]["stride"] == 1
    assert "1x65x65" in [s["shape"] for s in manifest["verification"]["fp32"]["shapes"]]


def test_a_given_stride_that_the_onnx_breaks_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_stage, "OnnxRuntimeRunner", _OnlyMultiplesOf8)
    with pytest.raises(SegexportError, match=r"1x68x68: .*GatherND"):
        segexport.export(_any_size(), size=(64, 64), out=tmp_path / "a", stride=4)  # type: ignore[operator]
    assert not (tmp_path / "a").exists()


def test_the_off_stride_shape_lies_inside_the_range() -> None:
    dynamic = DynamicRange(1, 4, (64, 64), (96, 256))
    assert stride_check.off_stride_shape(32, (64, 64), dynamic) == InputShape(1, 96, 96)
    # 64 and 192 are odd multiples of 64 but outside 128..160
    assert stride_check.off_stride_shape(64, (128, 128), DynamicRange(1, 4, (128, 128), (160, 256))) is None
