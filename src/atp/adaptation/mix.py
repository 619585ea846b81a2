"""ClassMix of easy pseudo-labelled images onto hard images (§8.2 steps 5 and 9)."""

from __future__ import annotations

import torch

from . import _rng

__all__ = ["classmix_masks", "mix", "mixed_targets", "row_ignore_weights"]

# Labels are train ids or `ignore_index`, all below 256, so presence is tracked over 256 slots.
_LABEL_SLOTS = 256


def classmix_masks(
    labels: torch.Tensor,
    batch_union: bool = True,
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Bool (B, H, W) masks of the pixels whose class is in a random half ⌈n/2⌉ of the classes.

    With `batch_union` (the DACS/DAFormer quirk, #10) every image draws from the classes present
    anywhere in the batch, so its mask may select classes it lacks; otherwise from its own classes.
    `ignore_index` is never selected. Labels must lie in [0, 256).
    """
    batch = labels.shape[0]
    flat = labels.reshape(batch, -1).long()
    present = torch.zeros(batch, _LABEL_SLOTS, dtype=torch.bool, device=labels.device)
    present.scatter_(1, flat, True)
    if 0 <= ignore_index < _LABEL_SLOTS:
        present[:, ignore_index] = False
    if batch_union:
        present = present.any(0, keepdim=True).expand(batch, -1)
    n_classes = present.sum(1, keepdim=True)
    n_chosen = (n_classes + 1) // 2

    # Random ranks among present classes: absent slots get key 2 and so rank after every present one.
    keys = _rng.uniform((batch, _LABEL_SLOTS), generator, labels.device)
    keys = torch.where(present, keys, 2.0)
    ranks = keys.argsort(dim=1).argsort(dim=1)
    chosen = present & (ranks < n_chosen)
    return chosen.gather(1, flat).reshape(labels.shape)


def mix(mask: torch.Tensor, pasted: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """`pasted` where mask (B, H, W) is set, else `background`; inputs (B, H, W) or (B, C, H, W)."""
    if pasted.dim() == mask.dim() + 1:
        mask = mask.unsqueeze(1)
    return torch.where(mask, pasted, background)


def mixed_targets(
    mask: torch.Tensor,
    easy_labels: torch.Tensor,
    hard_labels: torch.Tensor,
    hard_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, weights) of a mixed image: easy labels with weight 1 where pasted, hard ones elsewhere."""
    labels = torch.where(mask, easy_labels, hard_labels)
    weights = torch.where(mask, torch.ones_like(hard_weights), hard_weights)
    return labels, weights


def row_ignore_weights(
    q: torch.Tensor | float,
    shape: tuple[int, int, int],
    top: int = 15,
    bottom: int = 120,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, H, W) weights equal to q (0-d, or (B,) per image) with the top/bottom rows zeroed (§8.2 step 5)."""
    q = torch.as_tensor(q, dtype=torch.float32, device=device)
    if q.dim() == 1:
        q = q.reshape(-1, 1, 1)
    weights = q.expand(shape).clone()
    height = shape[-2]
    if top > 0:
        weights[:, :top] = 0
    if bottom > 0:
        weights[:, max(height - bottom, 0) :] = 0
    return weights
