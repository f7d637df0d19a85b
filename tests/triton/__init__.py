"""Support for the Triton tests: a stand-in for the Python backend's utilities, and a stand-in
for the onnxruntime backend that PyTriton's server lacks."""
