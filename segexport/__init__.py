"""segexport: ship PyTorch segmentation models as verified ONNX and TensorRT artifacts."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`segexport.export(model, ...)` without importing torch for the runtime's users."""
    if name == "export":  # the package, callable: `segexport.export(model, size=...)`
        import importlib

        return importlib.import_module("segexport.export")
    raise AttributeError(f"module 'segexport' has no attribute {name!r}")
