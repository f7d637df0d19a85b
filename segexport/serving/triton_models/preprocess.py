"""Triton Python-backend step 1 of a segexport ensemble: a raw RGB image -> the network's input.

The image is resized to the served size with the runtime's own resize, then normalised with
the artifact's mean/std (from the model config's `parameters`). Every request leaves at the
same size, which is what lets Triton's dynamic batcher combine them at the network.
"""

import json
import os
import sys

# The stub appends the model directory to sys.path; put the repository's copy of the runtime
# first, so that an installed segexport of another version can't shadow the one generated with.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import triton_python_backend_utils as pb_utils

from segexport.runtime.preprocessing import preprocess_for, resize


def parameters(args: dict) -> dict:
    """The JSON values of the model config's `parameters`."""
    config = json.loads(args["model_config"])
    return {key: json.loads(value["string_value"]) for key, value in config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        settings = parameters(args)
        self.size = (int(settings["height"]), int(settings["width"]))
        self.settings = settings  # mean, std and scale: the manifest's preprocessing
        self.bgr = settings["color_order"] == "BGR"
        self.dtype = np.dtype(settings["input_dtype"])

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                message = f"IMAGE must be RGB uint8 [H, W, 3], got {image.dtype} {list(image.shape)}"
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
                )
                continue
            resized = resize(np.ascontiguousarray(image), self.size)
            if self.bgr:
                resized = np.ascontiguousarray(resized[..., ::-1])
            tensor = preprocess_for(self.settings, resized).astype(self.dtype)
            original = np.asarray(image.shape[:2], dtype=np.int32)
            outputs = [pb_utils.Tensor("NETWORK_INPUT", tensor), pb_utils.Tensor("ORIGINAL_SIZE", original)]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
