"""A Python-backend stand-in for Triton's onnxruntime backend, which PyTriton's server lacks.

It serves the repository's own `1/model.onnx` with ONNX Runtime on the CPU under the network's
config (same name, I/O, max_batch_size, dynamic batching). Triton hands a Python model the
requests the dynamic batcher grouped; they are run as one batch, as the onnxruntime backend does.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def execute(self, requests: list) -> list:
        arrays = [
            {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            for request in requests
        ]
        feeds = {name: np.concatenate([a[name] for a in arrays]) for name in self.inputs}
        results = self.session.run(self.outputs, feeds)
        pb_utils.Logger.log_info(
            f"standin batch {feeds[self.inputs[0]].shape[0]} from {len(requests)} requests"
        )
        responses, start = [], 0
        for a in arrays:
            count = a[self.inputs[0]].shape[0]
            tensors = [
                pb_utils.Tensor(n, v[start : start + count])
                for n, v in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += count
        return responses
