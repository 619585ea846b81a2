"""Teacher pseudo-labels and the image-level confidence quality q (§4.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pseudo_labels_from_logits", "threshold_pseudo_labels"]


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
    max_prob, labels = logits.softmax(dim=1).max(dim=1)
    quality = (max_prob >= conf_threshold).float().mean()
    return labels, max_prob, quality


def threshold_pseudo_labels(
    labels: torch.Tensor, max_prob: torch.Tensor, threshold: float, ignore_index: int = 255
) -> torch.Tensor:
    """Labels with pixels whose confidence is below `threshold` set to `ignore_index` (a new tensor)."""
    return labels.masked_fill(max_prob < threshold, ignore_index)
