"""Class-balanced pseudo-label weights from the running class shares of the teacher's labels [I]."""

from __future__ import annotations

import torch

__all__ = ["ClassShare"]


class ClassShare(torch.nn.Module):
    """Running share of each class among the teacher's pseudo-labelled pixels, and pixel weights from it.

    ``weights(labels)`` gives a pixel of class c the weight ``share_c ** -power``, rescaled to mean 1 over the
    labelled pixels of the batch, so the loss keeps its scale and frequent classes stop drowning thin ones
    (self-training on a few classes' confident pixels starves the rest; spec small-scale hazard 3).
    ``power=0`` gives weight 1 everywhere. The share is a cumulative mean over the first updates and an
    EMA with ``momentum`` after that; it is a buffer, so a resumed run continues with it. Device-side
    arithmetic only: no host synchronisation inside the training step.
    """

    def __init__(self, num_classes: int, power: float = 0.5, momentum: float = 0.99, floor: float = 1e-4) -> None:
        super().__init__()
        if power < 0:
            raise ValueError(f"class-balance power must be >= 0, got {power}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"class-balance momentum must lie in [0, 1), got {momentum}")
        self.num_classes, self.power, self.momentum, self.floor = num_classes, power, momentum, floor
        self.register_buffer("share", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, labels: torch.Tensor) -> None:
        """Fold the class histogram of ``labels`` (any shape; values ≥ num_classes are ignored) into the share."""
        slots = labels.reshape(-1).long().clamp(0, self.num_classes)  # ignored pixels land in the extra slot
        counts = torch.zeros(self.num_classes + 1, device=slots.device)
        counts = counts.scatter_add_(0, slots, torch.ones_like(slots, dtype=counts.dtype))[: self.num_classes]
        total = counts.sum()
        steps = self.updates.float()
        keep = torch.clamp(steps / (steps + 1.0), max=self.momentum)  # 0 on the first update: the batch share
        keep = torch.where(total > 0, keep, torch.ones_like(keep))  # an all-ignored batch changes nothing
        self.share.mul_(keep).add_((1.0 - keep) * counts / total.clamp_min(1.0))
        self.updates.add_((total > 0).long())

    def weights(self, labels: torch.Tensor) -> torch.Tensor:
        """Per-pixel weights (same shape as ``labels``): 0 on ignored pixels, mean 1 over the labelled ones."""
        valid = labels < self.num_classes
        per_class = self.share.clamp_min(self.floor).pow(-self.power)
        weights = per_class[labels.long().clamp(0, self.num_classes - 1)] * valid
        mean = weights.sum() / valid.sum().clamp_min(1)
        return weights / mean.clamp_min(torch.finfo(weights.dtype).tiny)
