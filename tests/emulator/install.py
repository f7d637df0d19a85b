"""Putting the emulated modules where `import tensorrt` and `import cuda.bindings.runtime` find them."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.emulator import tensorrt as fake_tensorrt
from tests.emulator.device import CONSTANTS, Device, Runtime, functions


@dataclass
class Emulator:
    device: Device | None  # None when CUDA is real
    cudart: Any
    tensorrt: types.ModuleType


def cudart_module(device: Device) -> types.ModuleType:
    module = types.ModuleType("cuda.bindings.runtime")
    module.__dict__.update(CONSTANTS)
    module.__dict__.update(functions(Runtime(device)))
    return module


def _package(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    return module


def install(
    monkeypatch: pytest.MonkeyPatch,
    disabled: Iterable[str] = (),
    cuda: Any = None,
    tensorrt_version: str = "10.3.0",
    **device_options: Any,
) -> Emulator:
    """Fake TensorRT, and CUDA too unless `cuda` is the real `cuda.bindings.runtime` module."""
    device = None
    if cuda is None:
        device = Device(disabled, **device_options)
        cuda = cudart_module(device)
        monkeypatch.setitem(sys.modules, "cuda", _package("cuda"))
        monkeypatch.setitem(sys.modules, "cuda.bindings", _package("cuda.bindings"))
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cuda)
        monkeypatch.setitem(sys.modules, "cuda.cudart", cuda)
        executor: Any = fake_tensorrt.EmulatedExecutor(device, cuda)
    else:
        executor = fake_tensorrt.RealCudaExecutor(None, cuda)
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__dict__.update(fake_tensorrt.module_attributes(tensorrt_version, executor))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return Emulator(device, cuda, trt)
