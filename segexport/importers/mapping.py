"""Key maps that work both ways, so every importer has its inverse for free.

A rule pairs a source prefix template with a zoo prefix template; `{i}`, `{j}` stand for
integers (stage, block). Mapping a key replaces the first matching prefix; the rest of
the key (`weight`, `bias`, `running_mean`) is kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from segexport.errors import SegexportError

_FIELD = re.compile(r"\\\{(\w+)\\\}")


def _compile(template: str) -> re.Pattern[str]:
    return re.compile("^" + _FIELD.sub(lambda m: f"(?P<{m.group(1)}>\\d+)", re.escape(template)))


@dataclass(frozen=True)
class KeyMap:
    rules: tuple[tuple[str, str], ...]
    _forward: list[tuple[re.Pattern[str], str]] = field(init=False, repr=False, compare=False)
    _backward: list[tuple[re.Pattern[str], str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_forward", [(_compile(a), b) for a, b in self.rules])
        object.__setattr__(self, "_backward", [(_compile(b), a) for a, b in self.rules])

    @staticmethod
    def _apply(table: list[tuple[re.Pattern[str], str]], key: str) -> str | None:
        for pattern, template in table:
            match = pattern.match(key)
            if match:
                return template.format(**match.groupdict()) + key[match.end() :]
        return None

    def to_zoo(self, key: str) -> str | None:
        return self._apply(self._forward, key)

    def to_source(self, key: str) -> str | None:
        return self._apply(self._backward, key)

    def rename(
        self, state: dict[str, torch.Tensor], source: str, to_zoo: bool = True
    ) -> dict[str, torch.Tensor]:
        """Rename every key; a key no rule covers is an error (nothing is dropped silently)."""
        renamed: dict[str, torch.Tensor] = {}
        unmapped = []
        for key, tensor in state.items():
            target = self.to_zoo(key) if to_zoo else self.to_source(key)
            if target is None:
                unmapped.append(key)
            else:
                renamed[target] = tensor
        if unmapped:
            more = f" (+{len(unmapped) - 3} more)" if len(unmapped) > 3 else ""
            raise SegexportError(
                f"{source}: tensors with no place in the model: {', '.join(unmapped[:3])}{more}"
            )
        return renamed


def concat_pairs(
    state: dict[str, torch.Tensor], parts: Iterable[str], fused: str, source: str
) -> dict[str, torch.Tensor]:
    """Join tensors named `<prefix><part><suffix>` along dim 0 into `<prefix><fused><suffix>`
    (separate key/value projections -> one `kv` Linear)."""
    parts = tuple(parts)
    first = parts[0]
    out = dict(state)
    for key in [k for k in state if first in k]:
        names = [key.replace(first, part, 1) for part in parts]
        missing = [name for name in names if name not in state]
        if missing:
            raise SegexportError(f"{source}: {missing[0]} is missing")
        out[key.replace(first, fused, 1)] = torch.cat([state[name] for name in names], dim=0)
        for name in names:
            del out[name]
    return out


def split_pairs(
    state: dict[str, torch.Tensor], fused: str, parts: Iterable[str], sizes: Iterable[int] | None = None
) -> dict[str, torch.Tensor]:
    """Inverse of `concat_pairs`: equal chunks unless `sizes` gives the fractions' weights."""
    parts = tuple(parts)
    weights = tuple(sizes) if sizes is not None else (1,) * len(parts)
    out = dict(state)
    for key in [k for k in state if fused in k]:
        tensor = out.pop(key)
        unit = tensor.shape[0] // sum(weights)
        chunks = torch.split(tensor, [unit * w for w in weights], dim=0)
        for part, chunk in zip(parts, chunks, strict=True):
            out[key.replace(fused, part, 1)] = chunk
    return out


def same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> list[str]:
    """Keys that differ between two state dicts (missing on either side, or other values)."""
    problems = sorted(set(first) ^ set(second))
    for key in sorted(set(first) & set(second)):
        a, b = first[key], second[key]
        if a.shape != b.shape or not torch.equal(a.to(b.dtype), b):
            problems.append(key)
    return problems
