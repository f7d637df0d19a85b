"""transformers and timm as test references (the `dev` extra installs them).

Both import torchvision (timm at import time, transformers for its image utilities).
PyPI's torchvision does not register its C operators beside the CPU torch build these
machines use (platform notes): `import torchvision` fails in `_meta_registrations`,
which only adds fake-tensor kernels for those operators (nms, roi_align, ...). Nothing
here uses them, so that one module is replaced by an empty one before the first import;
where torchvision works, it loses only those fake kernels in the test process.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

import pytest

_META = "torchvision._meta_registrations"


def source_library(name: str) -> Any:
    if "torchvision" not in sys.modules:
        sys.modules.setdefault(_META, types.ModuleType(_META))
    try:
        return importlib.import_module(name)
    except ImportError as error:
        pytest.skip(f"{name} is not importable here ({error}); `pip install -e .[dev]` installs it")
