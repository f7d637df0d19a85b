"""The `segexport` command: a thin layer over the Python API.

`_base` holds the click group and its one-line errors, `options` the options several
commands share; each other module registers one group of commands on `main`. Commands
import their stage (and so torch or onnx) inside the function, so `--help`, `run` and
`doctor` start without them.
"""

from segexport.cli import bench, doctor, export, models, quantize, run, serving, trt, verify
from segexport.cli._base import main

__all__ = ["bench", "doctor", "export", "main", "models", "quantize", "run", "serving", "trt", "verify"]
