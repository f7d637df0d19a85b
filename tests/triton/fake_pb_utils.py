"""A minimal stand-in for `triton_python_backend_utils`, which exists only inside Triton's stub.

Just what the segexport steps call, with the stub's semantics: tensors are named numpy
arrays, a response carries output tensors or an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name = name
        self._array = np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class TritonError:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


@dataclass
class InferenceResponse:
    output_tensors: list[Tensor] = field(default_factory=list)
    error: TritonError | None = None

    def output(self, name: str) -> np.ndarray:
        return next(t.as_numpy() for t in self.output_tensors if t.name() == name)


@dataclass
class InferenceRequest:
    inputs: list[Tensor]


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs if t.name() == name), None)
