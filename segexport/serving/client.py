"""A small client for a segexport ensemble served by Triton: an RGB image in, its mask out.

The ensemble (`segexport triton --ensemble`) does the pre- and post-processing on the server,
so a client only sends the raw uint8 image and gets class ids at the image's own size. It
speaks gRPC through `tritonclient` (`pip install 'segexport[triton]'`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from segexport.errors import SegexportError, UnavailableError, first_line
from segexport.runtime.preprocessing import read_rgb
from segexport.serving.triton import import_tritonclient


class TritonSegmenter:
    """Masks from `MODEL_ensemble` on a Triton server; one gRPC channel, safe to share across threads."""

    def __init__(self, model: str, url: str = "localhost:8001", timeout_s: float | None = 30.0) -> None:
        grpcclient = import_tritonclient("tritonclient.grpc")
        self._grpc = grpcclient
        self.model = model
        self.url = url
        self.timeout_s = timeout_s
        self.client = grpcclient.InferenceServerClient(url=url)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the server says the model is ready, or raise after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                if self.client.is_server_ready() and self.client.is_model_ready(self.model):
                    return
                last = f"model {self.model} not ready"
            except Exception as error:  # InferenceServerException while the server starts
                last = first_line(error)
            time.sleep(0.25)
        raise UnavailableError(f"Triton at {self.url} not ready after {timeout_s:.0f} s ({last})")

    def __call__(self, image: np.ndarray | str | Path) -> np.ndarray:
        """Class ids [H, W] for an RGB uint8 image [H, W, 3] (or an image file)."""
        array = read_rgb(Path(image)) if isinstance(image, (str, Path)) else image
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise SegexportError(f"expected an RGB uint8 image [H, W, 3], got {array.dtype} {array.shape}")
        tensor = self._grpc.InferInput("IMAGE", list(array.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        result: Any = self.client.infer(
            self.model,
            [tensor],
            outputs=[self._grpc.InferRequestedOutput("MASK")],
            client_timeout=self.timeout_s,
        )
        return np.asarray(result.as_numpy("MASK"))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TritonSegmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
