"""Loading users' checkpoints safely and with errors that say what does not fit."""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segexport.errors import SegexportError, first_line
from segexport.runtime.artifacts import atomic_write

_NESTING_KEYS = ("state_dict", "model", "model_state_dict", "model_state")
_SHOWN = 5


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a `.pt`/`.pth` (tensors only, `weights_only=True`) or `.safetensors` file.

    A state_dict nested under `state_dict`/`model` (training checkpoints) is unwrapped,
    and a `module.` prefix (DataParallel/DDP) is stripped.
    """
    return unwrap_state_dict(read_checkpoint(path), path)


def read_checkpoint(path: Path) -> object:
    """The file's content as stored (a safetensors dict, or what `torch.load` safely unpickles),
    so importers can read metadata beside the tensors."""
    if not path.is_file():
        raise SegexportError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data: object = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise SegexportError(f"{path}: not a readable safetensors file ({error})") from error
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            reason = _unpickler_reason(error)
            if reason.startswith("Unsupported global"):
                raise SegexportError(
                    f"{path}: holds Python objects, not just tensors ({reason}); refused to "
                    "unpickle it (weights_only=True); save a plain state_dict instead"
                ) from error
            raise SegexportError(f"{path}: not a readable PyTorch checkpoint ({reason})") from error
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
            raise SegexportError(
                f"{path}: not a readable PyTorch checkpoint ({first_line(error)})"
            ) from error
    return data


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The one informative sentence of torch's long weights_only error."""
    text = str(error)
    _, marker, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if marker else text).splitlines() if line.strip()]
    return lines[0].split(". ")[0] if lines else "unpickling failed"


def unwrap_state_dict(data: object, path: Path, skip_other: bool = False) -> dict[str, torch.Tensor]:
    """The name -> tensor mapping inside a checkpoint (see `read_state_dict`); `skip_other`
    leaves out entries that are not tensors (milesial's `mask_values`) instead of refusing."""
    while isinstance(data, Mapping):
        nested = next((data[k] for k in _NESTING_KEYS if isinstance(data.get(k), Mapping)), None)
        if nested is None:
            break
        data = nested
    if not isinstance(data, Mapping) or not data:
        raise SegexportError(f"{path}: no state_dict found (expected a mapping of name -> tensor)")
    not_tensors = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if skip_other:
        data = {k: v for k, v in data.items() if k not in not_tensors}
    elif not_tensors:
        raise SegexportError(
            f"{path}: entries that are not tensors: {', '.join(map(str, not_tensors[:_SHOWN]))}"
        )
    state = {str(k): v for k, v in data.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _listing(items: list[str]) -> str:
    more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly; name the first missing, unexpected and mis-shaped keys on failure."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_listing(mismatched)}")
    if problems:
        raise SegexportError(
            f"{source} does not fit {type(model).__name__}: "
            + "; ".join(problems)
            + " (check --model, --num-classes and the model options)"
        )
    model.load_state_dict(state, strict=True)


def load_weights(model: nn.Module, path: Path) -> None:
    apply_state_dict(model, read_state_dict(path), str(path))


# Shipped demo checkpoints: models/<model name>/demo.safetensors, beside their recipe.
DEMO_DIR = Path(__file__).resolve().parents[1] / "models"
_METADATA_KEY = "segexport"
# BatchNorm statistics keep float32: fp16 would flush small variances towards zero.
_KEEP_FP32 = ("running_mean", "running_var")


def save_checkpoint(
    model: nn.Module, path: Path, record: dict[str, Any], fp16: bool = True, force: bool = False
) -> None:
    """Write a .safetensors state_dict with the training record in its header, atomically."""
    from safetensors.torch import save_file

    if path.suffix != ".safetensors":
        raise SegexportError(f"{path}: checkpoints are written as .safetensors")
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if fp16 and tensor.is_floating_point() and not key.endswith(_KEEP_FP32):
            tensor = tensor.half()
        state[key] = tensor
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path, lambda temp: save_file(state, str(temp), metadata={_METADATA_KEY: json.dumps(record)}), force
    )


def checkpoint_record(path: Path) -> dict[str, Any] | None:
    """The training record a segexport checkpoint carries (class names, size, mIoU)."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise SegexportError(f"{path}: not a readable safetensors file ({error})") from error
    raw = metadata.get(_METADATA_KEY)
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as error:
        raise SegexportError(f"{path}: its {_METADATA_KEY!r} metadata is not JSON ({error})") from None
    names = record.get("class_names") if isinstance(record, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise SegexportError(
            f"{path}: its {_METADATA_KEY!r} metadata must be a JSON object with class_names (a list of "
            "names); drop the metadata or fix it"
        )
    size = record.get("input_size")
    if size is not None and not (
        isinstance(size, list) and len(size) == 2 and all(type(v) is int and v > 0 for v in size)
    ):
        raise SegexportError(
            f"{path}: its {_METADATA_KEY!r} input_size must be [height, width], got {size!r}"
        )
    return record


@dataclass(frozen=True)
class Weights:
    path: Path
    record: dict[str, Any] | None

    @property
    def class_names(self) -> list[str] | None:
        return None if self.record is None else list(self.record["class_names"])


def demo_checkpoint(model_name: str) -> Path:
    """Where the shipped demo checkpoint of a (canonical) zoo name lives; it may not exist."""
    return DEMO_DIR / model_name / "demo.safetensors"


def has_demo_checkpoint(model_name: str) -> bool:
    return demo_checkpoint(model_name).is_file()


def resolve_weights(model_name: str, value: str | Path) -> Weights:
    """A checkpoint path, or `demo` for the checkpoint shipped with the model."""
    if str(value) == "demo":
        path = demo_checkpoint(model_name)
        if not DEMO_DIR.is_dir():
            raise SegexportError(
                "--weights demo: the demo checkpoints ship in the source repository "
                "(models/MODEL/demo.safetensors), not in the pip package; run from a clone of the "
                "repository or pass --weights PATH (e.g. a Hugging Face SegFormer directory)"
            )
        if not path.is_file():
            shipped = sorted(p.parent.name for p in DEMO_DIR.glob("*/demo.safetensors"))
            raise SegexportError(
                f"no demo checkpoint for {model_name}; shipped: {', '.join(shipped) or 'none'}"
            )
    else:
        path = Path(value)
        if not path.is_file():
            raise SegexportError(f"checkpoint {path} does not exist")
    return Weights(path, checkpoint_record(path))
