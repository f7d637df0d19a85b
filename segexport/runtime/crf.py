"""Dense-CRF-style refinement in numpy: mean-field inference over a local window.

Krähenbühl and Koltun's dense CRF sharpens masks along colour edges: each pixel's
class distribution is pulled towards neighbours of similar colour (appearance kernel)
and towards its close neighbours (smoothness kernel), with a Potts compatibility. The
maintained implementations need a C++ build (pydensecrf2 has no wheels; pydensecrf and
SimpleCRF do not build on current Pythons), so this is an approximation with numpy
only: the pairwise terms are summed over a dilated window of neighbours instead of over
every pixel, which is where almost all of their weight lies at these bandwidths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segexport.errors import SegexportError


@dataclass(frozen=True)
class DenseCRF:
    """Mean-field refinement of class probabilities with an image's colours."""

    iterations: int = 5
    radius: int = 3  # neighbours at offsets -radius..radius (times `dilation`) in y and x
    dilation: int = 2
    appearance_weight: float = 4.0
    appearance_spatial: float = 6.0  # theta_alpha, pixels
    appearance_colour: float = 13.0  # theta_beta, grey levels
    smoothness_weight: float = 2.0
    smoothness_spatial: float = 2.0  # theta_gamma, pixels

    def _offsets(self) -> list[tuple[int, int]]:
        steps = range(-self.radius, self.radius + 1)
        return [(dy * self.dilation, dx * self.dilation) for dy in steps for dx in steps if dy or dx]

    def refine(self, image: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """RGB uint8 [H, W, 3] and probabilities [C, H, W] -> refined probabilities [C, H, W]."""
        if image.shape[:2] != probabilities.shape[1:]:
            raise SegexportError(
                f"CRF: image {image.shape[:2]} and probabilities {probabilities.shape[1:]} differ in size"
            )
        height, width = image.shape[:2]
        reach = self.radius * self.dilation
        centre = image.astype(np.float32)
        colours = np.pad(centre, ((reach, reach), (reach, reach), (0, 0)), mode="edge")
        weights = []
        for dy, dx in self._offsets():
            neighbour = colours[reach + dy : reach + dy + height, reach + dx : reach + dx + width]
            distance = float(dy * dy + dx * dx)
            colour = np.square(neighbour - centre).sum(axis=2)
            weight = self.appearance_weight * np.exp(
                -distance / (2 * self.appearance_spatial**2) - colour / (2 * self.appearance_colour**2)
            )
            weight += self.smoothness_weight * np.exp(-distance / (2 * self.smoothness_spatial**2))
            weights.append(weight.astype(np.float32))
        unary = np.log(np.clip(probabilities, 1e-8, 1.0)).astype(np.float32)
        q = probabilities.astype(np.float32)
        for _ in range(self.iterations):
            padded = np.pad(q, ((0, 0), (reach, reach), (reach, reach)), mode="edge")
            message = np.zeros_like(q)
            for (dy, dx), weight in zip(self._offsets(), weights, strict=True):
                message += (
                    weight * padded[:, reach + dy : reach + dy + height, reach + dx : reach + dx + width]
                )
            # Potts: energy of label l is the weight of neighbours *not* labelled l; up to a
            # per-pixel constant that is -message_l, so the update adds the message.
            energy = unary + message
            energy -= energy.max(axis=0, keepdims=True)
            q = np.exp(energy)
            q /= q.sum(axis=0, keepdims=True)
        return q
