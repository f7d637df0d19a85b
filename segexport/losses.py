"""The seed's segmentation losses, corrected, plus its exercise 1 (a boundary-weighted loss).

Every loss takes logits [B, C, H, W] and integer labels [B, H, W] where `ignore_index`
marks pixels that count for nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from segexport.errors import SegexportError

IGNORE_INDEX = 255
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)


def _valid_one_hot(
    target: torch.Tensor, num_classes: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot [B, C, H, W] with ignored pixels all-zero, and the valid mask [B, 1, H, W]."""
    valid = (target != ignore_index).unsqueeze(1)
    safe = torch.where(target == ignore_index, torch.zeros_like(target), target)
    one_hot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).to(torch.float32)
    return one_hot * valid, valid


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0
) -> torch.Tensor:
    """1 - mean soft Dice over classes, pooled over the batch.

    Seed fix: ignored pixels were one-hot encoded (index 255 crashed `one_hot`) and counted;
    they are excluded from both the prediction and the target sums now.
    """
    probs = logits.float().softmax(dim=1)
    one_hot, valid = _valid_one_hot(target, probs.shape[1], ignore_index)
    probs = probs * valid
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    cardinality = probs.sum(dims) + one_hot.sum(dims)
    return 1 - ((2 * intersection + smooth) / (cardinality + smooth)).mean()


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float | Sequence[float] | None = None,
    gamma: float = 2.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Multi-class focal loss (Lin et al., 2017) with an optional per-class alpha.

    Seed fix: ignore_index was not honoured and alpha was one scalar for all classes.
    """
    valid = target != ignore_index
    if not valid.any():
        return logits.sum() * 0
    log_probs = logits.float().log_softmax(dim=1)
    labels = target[valid]
    log_pt = log_probs.permute(0, 2, 3, 1)[valid].gather(1, labels[:, None]).squeeze(1)
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    if alpha is not None:
        weights = torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)
        loss = loss * (weights[labels] if weights.ndim else weights)
    return loss.mean()


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


def lovasz_softmax_flat(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax over pixels: probs [P, C], labels [P]; classes present only."""
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).to(probs.dtype)
        if fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[order])))
    if not losses:
        return probs.sum() * 0
    return torch.stack(losses).mean()


def lovasz_softmax(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Lovász-softmax (Berman et al., 2018), a convex surrogate of the mean IoU.

    Seed fix: the seed sorted the [B, H, W] error map along its last axis only and then
    indexed the label map with that per-row permutation, so pixels were paired with the
    wrong labels; probabilities and labels are flattened to one pixel axis first now,
    and ignored pixels are dropped.
    """
    probs = logits.float().softmax(dim=1)
    flat_probs = probs.permute(0, 2, 3, 1).reshape(-1, probs.shape[1])
    flat_labels = target.reshape(-1)
    keep = flat_labels != ignore_index
    return lovasz_softmax_flat(flat_probs[keep], flat_labels[keep])


def boundary_map(target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """1 where a Sobel filter on the one-hot labels fires (a class edge), else 0: [B, H, W]."""
    one_hot, _ = _valid_one_hot(target, num_classes, ignore_index)
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=target.device)
    kernels = torch.stack([sobel_x, sobel_x.T])[:, None].repeat(num_classes, 1, 1, 1)
    padded = F.pad(one_hot, (1, 1, 1, 1), mode="replicate")
    edges = F.conv2d(padded, kernels, groups=num_classes).abs().amax(dim=1)
    return (edges > 0).to(torch.float32)


def boundary_weighted_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    boundary_weight: float = 4.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """The seed's exercise 1: cross-entropy weighted (1 + w) on label boundaries."""
    per_pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    weights = 1 + boundary_weight * boundary_map(target, logits.shape[1], ignore_index)
    weights = weights * (target != ignore_index)
    return (per_pixel * weights).sum() / weights.sum().clamp_min(1)


LOSSES: dict[str, Loss] = {
    "ce": cross_entropy,
    "dice": dice_loss,
    "focal": focal_loss,
    "lovasz": lovasz_softmax,
    "boundary": boundary_weighted_ce,
}


def parse_loss(spec: str) -> Loss:
    """`ce+dice` -> a loss that sums its terms."""
    names = [part.strip() for part in spec.split("+") if part.strip()]
    unknown = [name for name in names if name not in LOSSES]
    if not names or unknown:
        raise SegexportError(f"unknown loss {spec!r}; combine {', '.join(LOSSES)} with '+'")
    terms = [LOSSES[name] for name in names]

    def combined(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.stack([term(logits, target) for term in terms]).sum()

    return combined
