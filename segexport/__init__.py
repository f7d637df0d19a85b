"""segexport: ship PyTorch segmentation models as verified ONNX and TensorRT artifacts."""

__version__ = "0.1.0"
