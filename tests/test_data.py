"""Synthetic scenes and folder readers, including images in odd modes and bad folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segexport.data import (
    IGNORE_INDEX,
    SYNTHETIC_CLASSES,
    FolderDataset,
    ImageFolder,
    SyntheticScenes,
    read_mask,
)
from segexport.errors import SegexportError
from segexport.runtime import read_rgb


def test_synthetic_is_deterministic_and_splits_differ() -> None:
    first = SyntheticScenes("train", 4, (64, 96))
    again = SyntheticScenes("train", 4, (64, 96))
    other = SyntheticScenes("eval", 4, (64, 96))
    image, labels = first[2]
    assert image.shape == (64, 96, 3) and image.dtype == np.uint8
    assert labels.shape == (64, 96) and labels.dtype == np.int64
    assert np.array_equal(image, again[2][0]) and np.array_equal(labels, again[2][1])
    assert not np.array_equal(image, other[2][0])


def test_synthetic_covers_every_class_and_colour_is_not_the_cue() -> None:
    scenes = SyntheticScenes("train", 24, (96, 96))
    seen = set()
    colours: dict[int, list[np.ndarray]] = {}
    for image, labels in scenes:
        seen.update(np.unique(labels).tolist())
        for c in range(1, len(SYNTHETIC_CLASSES)):
            if (labels == c).sum() > 50:
                colours.setdefault(c, []).append(image[labels == c].mean(axis=0))
    assert seen == set(range(len(SYNTHETIC_CLASSES)))
    for c, means in colours.items():
        # The mean colour of one class varies widely between images.
        assert np.std(np.stack(means), axis=0).mean() > 20, SYNTHETIC_CLASSES[c]


def _write_pair(root: Path, name: str, image: Image.Image, mask: np.ndarray) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    image.save(root / "images" / f"{name}.png")
    palette_mask = Image.fromarray(mask.astype(np.uint8), mode="P")
    palette_mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [255, 255, 255] * 253)
    palette_mask.save(root / "masks" / f"{name}.png")


@pytest.mark.parametrize(
    "mode",
    ["RGB", "L", "RGBA", "I;16", "P"],
)
def test_read_rgb_handles_odd_modes(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "image.png"
    if mode == "I;16":
        source = Image.fromarray(np.full((5, 7), 257 * 100, dtype=np.uint16))
    else:
        source = Image.new("RGB", (7, 5), (200, 100, 50)).convert(mode)
    source.save(path)
    image = read_rgb(path)
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    if mode == "I;16":
        assert int(image[0, 0, 0]) == 100  # 16-bit range scaled, not clipped to 255
    if mode == "RGB":
        assert image[0, 0].tolist() == [200, 100, 50]


def test_folder_dataset_reads_palette_masks_with_ignore(tmp_path: Path) -> None:
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[:, 3:] = 2
    mask[0, 0] = IGNORE_INDEX
    _write_pair(tmp_path, "a", Image.new("RGB", (6, 4)), mask)
    dataset = FolderDataset.from_dirs(tmp_path / "images", tmp_path / "masks", ["bg", "x", "y"])
    image, labels = dataset[0]
    assert image.shape == (4, 6, 3)
    assert labels[0, 0] == IGNORE_INDEX and labels[0, 5] == 2


def test_size_mismatch_is_reported(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", Image.new("RGB", (8, 4)), np.zeros((4, 6), dtype=np.uint8))
    dataset = FolderDataset.from_dirs(tmp_path / "images", tmp_path / "masks", ["bg"])
    with pytest.raises(SegexportError, match="image is 8x4 but its mask is 6x4"):
        dataset[0]


def test_label_beyond_classes_is_reported(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", Image.new("RGB", (6, 4)), np.full((4, 6), 5, dtype=np.uint8))
    dataset = FolderDataset.from_dirs(tmp_path / "images", tmp_path / "masks", ["bg", "x"])
    with pytest.raises(SegexportError, match="label 5 >= 2 classes"):
        dataset[0]


def test_missing_mask_is_reported(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", Image.new("RGB", (6, 4)), np.zeros((4, 6), dtype=np.uint8))
    Image.new("RGB", (6, 4)).save(tmp_path / "images" / "b.png")
    with pytest.raises(SegexportError, match=r"no mask .* for b\.png"):
        FolderDataset.from_dirs(tmp_path / "images", tmp_path / "masks", ["bg"])


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(SegexportError, match="holds no images"):
        ImageFolder.from_dir(tmp_path)
    with pytest.raises(SegexportError, match="does not exist"):
        ImageFolder.from_dir(tmp_path / "nope")


def test_unreadable_image_and_rgb_mask(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(SegexportError, match="unreadable image"):
        read_rgb(broken)
    rgb_mask = tmp_path / "mask.png"
    Image.new("RGB", (3, 3)).save(rgb_mask)
    with pytest.raises(SegexportError, match="not a palette or grayscale"):
        read_mask(rgb_mask)


def test_calibration_recipe_file_matches_the_generator() -> None:
    import json

    from segexport.data import SPLIT_SEEDS

    recipe = json.loads((Path(__file__).parents[1] / "calibration" / "calibration.json").read_text())
    assert recipe["classes"] == list(SYNTHETIC_CLASSES)
    assert {name: split["seed"] for name, split in recipe["splits"].items()} == SPLIT_SEEDS
