"""Checkpoint loading: every supported layout, `weights_only` refusal of pickles,
corrupt files and key mismatches.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from segexport.errors import SegexportError
from segexport.weights import load_weights, read_state_dict
from segexport.zoo import create_model

NAME = "unet-small"


@pytest.fixture()
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return create_model(NAME).state_dict()


def _loaded_equals(path: Path, state: dict[str, torch.Tensor]) -> bool:
    model = create_model(NAME)
    load_weights(model, path)
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: {"model": s},
        lambda s: {f"module.{k}": v for k, v in s.items()},
    ],
    ids=["plain", "nested-state_dict", "nested-model", "ddp-prefix"],
)
def test_pt_layouts_load(tmp_path: Path, state: dict[str, torch.Tensor], wrap) -> None:
    path = tmp_path / "w.pth"
    torch.save(wrap(state), path)
    assert _loaded_equals(path, state)


def test_safetensors_loads(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    assert _loaded_equals(path, state)


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(SegexportError, match="not a readable PyTorch checkpoint"):
        read_state_dict(path)


def test_corrupt_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"not safetensors at all")
    with pytest.raises(SegexportError, match="not a readable safetensors file"):
        read_state_dict(path)


class Payload:
    def __reduce__(self):  # a pickle that would run code when loaded unsafely
        return (print, ("unpickled!",))


def test_arbitrary_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weight": Payload()}, path)
    with pytest.raises(SegexportError, match=r"Unsupported global.*refused to unpickle"):
        read_state_dict(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SegexportError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")


def test_mismatch_lists_keys_and_shapes(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    broken = dict(state)
    broken.pop("final_conv.bias")
    broken["extra.weight"] = torch.zeros(1)
    broken["final_conv.weight"] = torch.zeros(5, 16, 1, 1)
    path = tmp_path / "w.pt"
    torch.save(broken, path)
    with pytest.raises(SegexportError) as info:
        load_weights(create_model(NAME), path)
    message = str(info.value)
    assert "1 missing keys: final_conv.bias" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "final_conv.weight (5, 16, 1, 1) vs model (2, 16, 1, 1)" in message


def test_non_tensor_entries_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(1), "b": 3}, path)
    with pytest.raises(SegexportError, match="not tensors: b"):
        read_state_dict(path)
