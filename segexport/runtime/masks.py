"""The segmenter's outputs: numpy arrays that also carry the artifact's class names and palette.

A module of their own so that `segmenter` and `stream` both return them without importing
each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segexport.runtime.media import colorize, default_palette, overlay


class LabelledArray(np.ndarray):
    """A numpy array that also carries the artifact's class names and palette."""

    class_names: tuple[str, ...]
    palette: np.ndarray

    def __new__(cls, array: np.ndarray, class_names: Sequence[str], palette: np.ndarray) -> LabelledArray:
        labelled = np.asarray(array).view(cls)
        labelled.class_names = tuple(class_names)
        labelled.palette = palette
        return labelled

    def __array_finalize__(self, source: Any) -> None:
        self.class_names = getattr(source, "class_names", ())
        self.palette = getattr(source, "palette", default_palette())


class Mask(LabelledArray):
    """Class ids [H, W] at the input image's resolution."""

    def colorize(self) -> np.ndarray:
        return colorize(np.asarray(self), self.palette)

    def overlay(self, image: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        return overlay(image, np.asarray(self), alpha, self.palette)


class Probabilities(LabelledArray):
    """Class probabilities float32 [C, H, W] at the input image's resolution."""
