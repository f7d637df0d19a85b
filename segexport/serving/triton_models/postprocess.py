"""Triton Python-backend step 3 of a segexport ensemble: the network's logits -> a mask.

The logits are resized bilinearly to the client's original image size, then argmax'd, with
the runtime's own `logits_to_mask`, so a served mask equals the runtime's for the same image.
"""

import os
import sys

# As in preprocess.py: the repository's copy of the runtime comes first on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import triton_python_backend_utils as pb_utils

from segexport.runtime.geometry import logits_to_mask


class TritonPythonModel:
    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "NETWORK_OUTPUT").as_numpy()
            height, width = pb_utils.get_input_tensor_by_name(request, "ORIGINAL_SIZE").as_numpy().tolist()
            mask = logits_to_mask(np.asarray(logits, dtype=np.float32)[0], (height, width))
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("MASK", mask)]))
        return responses
