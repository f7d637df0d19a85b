"""Post-processing shared by the runtime and the Triton ensemble: logits resized, then argmax'd."""

from __future__ import annotations

import numpy as np
import pytest

from segexport.runtime.preprocessing import logits_to_mask, resize_logits


@pytest.mark.parametrize("size", [(64, 64), (37, 91), (300, 200), (16, 16)])
def test_resize_logits_is_pytorchs_bilinear(size: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    logits = np.random.default_rng(0).normal(size=(2, 5, 32, 48)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(logits), size=size, mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_allclose(resize_logits(logits, size), expected, atol=1e-5)


def test_logits_to_mask_reads_one_channel_as_binary() -> None:
    logits = np.array([[[[-1.0, 2.0], [0.5, -3.0]]]], dtype=np.float32)
    assert logits_to_mask(logits).tolist() == [[[0, 1], [1, 0]]]
    assert logits_to_mask(np.zeros((1, 300, 2, 2), np.float32)).dtype == np.uint16
