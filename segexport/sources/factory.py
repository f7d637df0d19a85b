"""A user's factory (`path/file.py:build`, `package.module:build`) and weights, loaded once.

Importing the user's file runs their code, as `python file.py` would: that is the point
of this door, and the CLI's help says so. What comes back is checked (a module, weights that
fit it) and every failure is one line naming the factory.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segexport.errors import SegexportError


def is_factory(model: str | None) -> bool:
    """Whether a `--model` value names a user's factory rather than a zoo name."""
    return model is not None and (":" in model or model.endswith(".py"))


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def load_factory(target: str) -> tuple[Callable[..., Any], str]:
    """The callable `target` names and its canonical spelling (files made absolute)."""
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise SegexportError(f"--model {target}: expected FILE.py:FUNCTION or package.module:FUNCTION")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if path.suffix != ".py" or not path.is_file():
            raise SegexportError(f"--model {target}: {where} is not a .py file")
        module_name = f"segexport_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:  # the user's code
            sys.modules.pop(module_name, None)
            raise SegexportError(f"--model {target}: importing {where} raised {_last_line(error)}") from None
        canonical = f"{path.resolve()}:{name}"
    else:
        try:
            module = importlib.import_module(where)
        except Exception as error:  # ImportError, or the module's own code failing
            raise SegexportError(f"--model {target}: cannot import {where} ({_last_line(error)})") from None
        canonical = target
    factory = getattr(module, name, None)
    if not callable(factory):
        raise SegexportError(f"--model {target}: {where} has no callable {name}")
    return factory, canonical


def build_from_factory(target: str, arguments: dict[str, Any] | None = None) -> tuple[nn.Module, str]:
    """Call the factory with `arguments`; the module (in eval mode) and the factory's canonical name."""
    factory, canonical = load_factory(target)
    try:
        model = factory(**(arguments or {}))
    except Exception as error:  # the user's code, or arguments it does not take
        raise SegexportError(f"--model {target}: the factory raised {_last_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise SegexportError(
            f"--model {target}: the factory returned a {type(model).__name__}, not an nn.Module"
        )
    return model.eval(), canonical


def load_user_weights(model: nn.Module, path: Path) -> str:
    """Load a state_dict (`weights_only=True`: tensors, not pickled code) into `model`; its sha256."""
    if not path.is_file():
        raise SegexportError(f"--weights {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a checkpoint, or one that needs pickled code
        raise SegexportError(
            f"--weights {path}: not a weights-only checkpoint ({_last_line(error)})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SegexportError(f"--weights {path}: expected a state_dict, got a {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise SegexportError(
            f"--weights {path} do not fit the module: {str(error).splitlines()[0]}"
        ) from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def state_digest(model: nn.Module) -> str:
    """sha256 over the module's parameters and buffers (names, shapes, bytes): whether a rebuilt
    module is the one that was exported, random initialisation included."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{list(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()
