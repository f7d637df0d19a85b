"""Models from outside the zoo: a user's `nn.Module`, their factory file, or an ONNX file.

`adapter` turns any module's return value into one class-score output (`ScoresAdapter`) and
learns its contract by running it (`probe_module`); `factory` imports a user's
`file.py:build` / `package.module:build` and loads their weights. Shared by the export stage
(which writes what the probe decided) and the reference (which rebuilds it later).
"""

from segexport.sources.adapter import OutputChoice, Probe, ScoresAdapter, probe_module
from segexport.sources.factory import build_from_factory, load_user_weights

__all__ = [
    "OutputChoice",
    "Probe",
    "ScoresAdapter",
    "build_from_factory",
    "load_user_weights",
    "probe_module",
]
