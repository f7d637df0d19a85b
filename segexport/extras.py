"""Which optional extra brings which import, so a missing one is a one-line user error.

The base install is the runtime (numpy, ONNX Runtime, Pillow, click): enough to run an
artifact on a Jetson. The stages that make artifacts need `segexport[export]`; engines
need `segexport[trt]`; Triton repositories `segexport[triton]`; `segexport bench --plot`
needs `segexport[bench]`. A command that reaches a missing package says which extra to
install instead of showing a traceback.
"""

from __future__ import annotations

from segexport.errors import SegexportError, UnavailableError

EXTRAS = {
    "export": ("torch", "onnx", "onnxsim", "onnxscript", "safetensors", "tqdm"),
    "trt": ("tensorrt", "cuda"),
    "video": ("av",),
    "triton": ("tritonclient", "grpc"),
    "bench": ("matplotlib",),
}


def extra_for(module: str | None) -> str | None:
    """The extra that provides `module` (a dotted name), or None when no extra does."""
    top = (module or "").split(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def missing_extra_error(error: ModuleNotFoundError) -> SegexportError | None:
    """The one-line error for an import that an uninstalled extra would satisfy.

    Exit 3 like every "this install or machine lacks it" error (UnavailableError), for
    every extra alike: scripts tell "install something" (3) from "fix the command" (2).
    """
    extra = extra_for(error.name)
    if extra is None:
        return None
    return UnavailableError(
        f"this command needs the '{extra}' extra ({error.name} is not installed): "
        f"pip install 'segexport[{extra}]'"
    )
