"""Every import is verified like an export: against the source library when it is installed,
and always against the inverse mapping (every source tensor comes back unchanged)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from segexport.compare import Tolerance, compare_arrays
from segexport.errors import VerificationError
from segexport.importers import format_module
from segexport.importers.base import Imported
from segexport.importers.mapping import same_tensors


def check_import(
    imported: Imported, model: nn.Module, size: tuple[int, int], tolerance: Tolerance
) -> dict[str, Any]:
    """The manifest's `source.check`; raises VerificationError when the import is not exact."""
    module = format_module(imported.format)
    ours = {k: v for k, v in model.state_dict().items() if k in imported.state_dict}
    kept = {k: v for k, v in imported.source_state.items() if k not in imported.ignored}
    differ = same_tensors(module.inverse(imported, ours), kept)
    if differ:
        raise VerificationError(
            f"{imported.path}: the inverse mapping does not give back {len(differ)} source tensors "
            f"({', '.join(differ[:3])}); nothing written"
        )
    record: dict[str, Any] = {"inverse_mapping": f"exact ({len(kept)} tensors)"}
    reference = module.reference(imported)
    if isinstance(reference, str):
        record["reference"] = {"skipped": reference}
        return record
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = reference.theirs(image).float().numpy()
        mine = reference.ours(model, image).float().numpy()
    comparison = compare_arrays("output", theirs, mine, tolerance, labels=theirs.ndim == 4)
    record["reference"] = {
        "against": reference.label,
        "input": f"1x{size[0]}x{size[1]}",
        **asdict(comparison),
    }
    if not comparison.passed:
        raise VerificationError(
            f"{imported.path}: the converted model differs from {reference.label} "
            f"(rel L2 {comparison.rel_l2:.2e} > {tolerance.max_rel_l2:.0e}); nothing written"
        )
    return record


def describe_check(record: dict[str, Any]) -> str:
    """One progress line: what the import was checked against, and how close it came."""
    reference = record["reference"]
    if "skipped" in reference:
        return f"inverse mapping {record['inverse_mapping']}; source library: {reference['skipped']}"
    figures = f"vs {reference['against']}: rel L2 {reference['rel_l2']:.1e}"
    return f"inverse mapping {record['inverse_mapping']}; {figures}"
