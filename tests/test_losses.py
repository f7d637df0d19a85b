"""Each loss against a direct computation on tiny inputs, ignore pixels included."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from segexport.errors import SegexportError
from segexport.losses import (
    IGNORE_INDEX,
    boundary_map,
    boundary_weighted_ce,
    cross_entropy,
    dice_loss,
    focal_loss,
    lovasz_softmax,
    lovasz_softmax_flat,
    parse_loss,
)


@pytest.fixture()
def case() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=generator)
    target = torch.randint(0, 3, (2, 4, 5), generator=generator)
    target[0, 0, :3] = IGNORE_INDEX
    target[1, 2, 2] = IGNORE_INDEX
    return logits, target


def _pixels(logits: torch.Tensor, target: torch.Tensor) -> list[tuple[list[float], int]]:
    """(softmax probabilities, label) of every non-ignored pixel, computed one by one."""
    out = []
    for b, y, x in itertools.product(*(range(n) for n in target.shape)):
        label = int(target[b, y, x])
        if label == IGNORE_INDEX:
            continue
        scores = [math.exp(float(v)) for v in logits[b, :, y, x]]
        out.append(([s / sum(scores) for s in scores], label))
    return out


def test_cross_entropy_weighted_with_ignore(case) -> None:
    logits, target = case
    weight = torch.tensor([1.0, 2.0, 0.5])
    num = den = 0.0
    for probs, label in _pixels(logits, target):
        num += -float(weight[label]) * math.log(probs[label])
        den += float(weight[label])
    assert float(cross_entropy(logits, target, weight)) == pytest.approx(num / den, rel=1e-5)


def test_dice_excludes_ignored_pixels(case) -> None:
    logits, target = case
    pixels = _pixels(logits, target)
    dice = []
    for c in range(3):
        inter = sum(p[c] for p, label in pixels if label == c)
        card = sum(p[c] for p, _ in pixels) + sum(1 for _, label in pixels if label == c)
        dice.append((2 * inter + 1.0) / (card + 1.0))
    assert float(dice_loss(logits, target)) == pytest.approx(1 - sum(dice) / 3, rel=1e-5)
    changed = logits.clone()
    changed[0, :, 0, :3] = 100.0  # only ignored pixels change
    assert float(dice_loss(changed, target)) == pytest.approx(float(dice_loss(logits, target)), rel=1e-6)


def test_focal_with_per_class_alpha(case) -> None:
    logits, target = case
    alpha = [0.25, 0.5, 1.0]
    expected = [
        -alpha[label] * (1 - probs[label]) ** 2 * math.log(probs[label])
        for probs, label in _pixels(logits, target)
    ]
    assert float(focal_loss(logits, target, alpha=alpha)) == pytest.approx(
        sum(expected) / len(expected), rel=1e-5
    )


def test_focal_with_gamma_zero_is_cross_entropy(case) -> None:
    logits, target = case
    assert float(focal_loss(logits, target, gamma=0.0)) == pytest.approx(float(cross_entropy(logits, target)))


def _brute_force_lovasz(probs: list[list[float]], labels: list[int]) -> float:
    """Lovász extension of the Jaccard set loss |M| / |fg u M|, evaluated from its definition."""
    losses = []
    for c in range(len(probs[0])):
        fg = {i for i, label in enumerate(labels) if label == c}
        if not fg:
            continue
        errors = [abs((1.0 if i in fg else 0.0) - p[c]) for i, p in enumerate(probs)]
        order = sorted(range(len(errors)), key=lambda i: -errors[i])
        total, previous, mistakes = 0.0, 0.0, set()
        for i in order:
            mistakes.add(i)
            jaccard = len(mistakes) / len(fg | mistakes)
            total += errors[i] * (jaccard - previous)
            previous = jaccard
        losses.append(total)
    return sum(losses) / len(losses)


def test_lovasz_matches_brute_force_jaccard(case) -> None:
    logits, target = case
    pixels = _pixels(logits, target)
    expected = _brute_force_lovasz([p for p, _ in pixels], [label for _, label in pixels])
    assert float(lovasz_softmax(logits, target)) == pytest.approx(expected, rel=1e-5)


def test_lovasz_on_crisp_predictions_is_one_minus_iou() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 2])
    probs = torch.nn.functional.one_hot(predicted, 3).float()
    ious = []
    for c in range(3):
        inter = int(((labels == c) & (predicted == c)).sum())
        union = int(((labels == c) | (predicted == c)).sum())
        ious.append(inter / union)
    assert float(lovasz_softmax_flat(probs, labels)) == pytest.approx(1 - sum(ious) / 3)


def test_boundary_map_marks_the_class_edge() -> None:
    target = torch.zeros(1, 4, 6, dtype=torch.long)
    target[:, :, 3:] = 1
    edges = boundary_map(target, 2)
    assert edges[0].sum(dim=0).tolist() == [0, 0, 4, 4, 0, 0]


def test_boundary_weighted_ce_weights_edges(case) -> None:
    logits, target = case
    per_pixel = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    weights = (1 + 4.0 * boundary_map(target, 3)) * (target != IGNORE_INDEX)
    expected = float((per_pixel * weights).sum() / weights.sum())
    assert float(boundary_weighted_ce(logits, target)) == pytest.approx(expected, rel=1e-6)
    assert float(boundary_weighted_ce(logits, target, boundary_weight=0.0)) == pytest.approx(
        float(cross_entropy(logits, target)), rel=1e-5
    )


def test_parse_loss_sums_terms(case) -> None:
    logits, target = case
    combined = parse_loss("ce+dice")(logits, target)
    assert float(combined) == pytest.approx(float(cross_entropy(logits, target) + dice_loss(logits, target)))
    with pytest.raises(SegexportError, match="unknown loss"):
        parse_loss("ce+nope")


def test_losses_are_differentiable(case) -> None:
    logits, target = case
    logits = logits.clone().requires_grad_()
    parse_loss("ce+dice+focal+lovasz+boundary")(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
