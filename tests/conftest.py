"""Shared fixtures: small models and their exported artifacts, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segexport.export import ExportRequest, export_onnx
from segexport.zoo import create_model

SMALL = "unet-small"


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random state_dict of unet-small, saved as a plain .pt file."""
    torch.manual_seed(1234)
    model = create_model(SMALL)
    path = tmp_path_factory.mktemp("weights") / "unet_small.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def small_artifact(tmp_path_factory: pytest.TempPathFactory, small_weights: Path) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / SMALL
    export_onnx(ExportRequest(SMALL, size=(64, 64), weights=small_weights, out_dir=out))
    return out


@pytest.fixture(scope="session")
def segformer_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo SegFormer-B0 checkpoint as FP32, FP16 and INT8 ONNX at its 128x128 training size."""
    from segexport.quantize import QuantizeRequest, quantize_artifact

    out = tmp_path_factory.mktemp("demo") / "segformer-b0"
    export_onnx(ExportRequest("segformer-b0", weights="demo", size=(128, 128), out_dir=out))
    quantize_artifact(QuantizeRequest(artifacts=out, calib_size=32))
    return out
