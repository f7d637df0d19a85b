"""Segmentation metrics on label maps (numpy only: usable by the runtime and by verify)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """[num_classes, num_classes] counts, rows = ground truth, columns = prediction."""
    valid = labels != ignore_index
    index = labels[valid].astype(np.int64) * num_classes + predictions[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class IoUReport:
    miou: float
    per_class: dict[str, float | None]  # None: class absent from both labels and predictions
    pixel_accuracy: float

    def to_dict(self) -> dict[str, object]:
        return {"miou": self.miou, "pixel_accuracy": self.pixel_accuracy, "per_class_iou": self.per_class}


def iou_report(confusion: np.ndarray, class_names: tuple[str, ...] | list[str]) -> IoUReport:
    """mIoU over the classes that occur (in labels or predictions)."""
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    iou = np.where(present, intersection / np.maximum(union, 1), np.nan)
    per_class = {
        name: (None if not present[i] else round(float(iou[i]), 6)) for i, name in enumerate(class_names)
    }
    miou = float(np.nanmean(iou)) if present.any() else 0.0
    total = confusion.sum()
    accuracy = float(intersection.sum() / total) if total else 0.0
    return IoUReport(miou, per_class, accuracy)
