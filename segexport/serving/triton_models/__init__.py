"""The `model.py` files of the ensemble's Python-backend steps, copied into repositories.

They run inside Triton's Python-backend stub, where `triton_python_backend_utils` exists and
segexport usually does not: each imports numpy and the copy of the runtime's
pre/post-processing that the repository carries beside it (see `segexport.serving.triton`).
"""
