"""A schema-valid manifest for hand-made artifact directories in tests.

`read_manifest` checks the schema, so a test that plants files needs a real-looking manifest:
this one vouches for every file already in the directory (as a stage would have).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segexport.runtime.artifacts import describe_files, write_json_atomic


def write_manifest(directory: Path, num_classes: int = 2, **sections: Any) -> dict[str, Any]:
    """Write and return a minimal valid manifest; `sections` add or replace top-level keys."""
    manifest = {
        "schema_version": 1,
        "model": {
            "name": "unet-small",
            "num_classes": num_classes,
            "class_names": [f"class{i}" for i in range(num_classes)],
        },
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}],
        "outputs": [
            {"name": "logits", "dtype": "float32", "shape": ["batch", num_classes, "height", "width"]}
        ],
        "dynamic_axes": {"batch": [1, 4], "height": [32, 256], "width": [32, 256]},
        "export_shape": "1x64x64",
        "files": describe_files(directory),
        **sections,
    }
    write_json_atomic(directory / "manifest.json", manifest)
    return manifest
