"""Teacher pseudo-labels and the image-level confidence quality q (§4.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "class_balanced_pseudo_labels",
    "class_counts",
    "class_quantile_thresholds",
    "pseudo_labels_from_logits",
    "threshold_pseudo_labels",
]


@torch.no_grad()
def pseudo_labels_from_logits(
    logits: torch.Tensor,
    size: tuple[int, int] | None = None,
    conf_threshold: float = 0.968,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(labels (B,H,W) int64, max_prob (B,H,W), q 0-d) from logits (B,C,h,w).

    Logits are upsampled bilinearly (align_corners=False) to `size` when given; q is the fraction of
    pixels over the whole batch whose max probability is ≥ `conf_threshold`.
    """
    logits = logits.detach().float()
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    # max softmax = exp(max logit − logsumexp): no (B, C, H, W) probability tensor is materialised
    max_logit, labels = logits.max(dim=1)
    max_prob = (max_logit - logits.logsumexp(dim=1)).exp()
    quality = (max_prob >= conf_threshold).float().mean()
    return labels, max_prob, quality


def threshold_pseudo_labels(
    labels: torch.Tensor, max_prob: torch.Tensor, threshold: float, ignore_index: int = 255
) -> torch.Tensor:
    """Labels with pixels whose confidence is below `threshold` set to `ignore_index` (a new tensor)."""
    return labels.masked_fill(max_prob < threshold, ignore_index)


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixels per class (C,) int64 of ``labels`` (any shape); values ≥ ``num_classes`` (ignore) are not counted.

    bincount's output size depends on the largest label (a host sync on a GPU): this counts into C + 1 slots
    on the device instead, so it runs inside the training step.
    """
    slots = labels.reshape(-1).long().clamp(max=num_classes)
    counts = torch.zeros(num_classes + 1, dtype=torch.long, device=slots.device)
    return counts.scatter_add_(0, slots, torch.ones_like(slots))[:num_classes]


@torch.no_grad()
def class_quantile_thresholds(
    labels: torch.Tensor, confidence: torch.Tensor, quantile: float, num_classes: int
) -> torch.Tensor:
    """Per-class confidence thresholds (C,): the `quantile` of the confidences of the pixels labelled c.

    The value is the order statistic at index ⌊quantile·(n_c−1)⌋ of class c's n_c sorted confidences
    (the 'lower' quantile); classes with no pixel get +inf. One sort over the batch, no loop over
    classes and no host sync, so it runs inside the training step.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
    flat_labels = labels.reshape(-1)
    flat_conf = confidence.reshape(-1).float().clamp(0.0, 1.0)
    # Sort by class first, then confidence: class ids are integers and confidences lie in [0, 1].
    order = torch.argsort(flat_labels.double() * 2.0 + flat_conf.double())
    sorted_conf = flat_conf[order]
    counts = class_counts(flat_labels, num_classes)
    starts = torch.cumsum(counts, 0) - counts
    offsets = torch.floor(quantile * (counts - 1).clamp(min=0).double()).long()
    index = (starts + offsets).clamp(max=max(flat_conf.numel() - 1, 0))
    thresholds = sorted_conf[index]
    return torch.where(counts > 0, thresholds, torch.full_like(thresholds, float("inf")))


def class_balanced_pseudo_labels(
    labels: torch.Tensor,
    confidence: torch.Tensor,
    keep: float,
    num_classes: int,
    threshold: float | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Class-wise pseudo-label selection (CBST-style): keep each class's most confident `keep` share.

    A pixel stays when its confidence reaches its class's (1 − keep) quantile in the batch, or the
    global `threshold` when one is given (so confident pixels of frequent classes are never dropped
    and rare classes keep their best pixels even when no pixel of theirs reaches `threshold`).
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must lie in (0, 1], got {keep}")
    per_class = class_quantile_thresholds(labels, confidence, 1.0 - keep, num_classes)
    pixel_threshold = per_class[labels]
    if threshold is not None:
        pixel_threshold = pixel_threshold.clamp(max=threshold)
    return labels.masked_fill(confidence < pixel_threshold, ignore_index)
