"""SePiCo's class-balanced crop of target images on teacher pseudo-labels (§2.6, "pseudo random crop")."""

from __future__ import annotations

import torch

from . import _rng

__all__ = ["class_balanced_crop_box", "crop"]

Box = tuple[torch.Tensor | int, torch.Tensor | int]


def class_balanced_crop_box(
    labels: torch.Tensor,
    crop_size: tuple[int, int] | int,
    tries: int = 10,
    cat_max_ratio: float = 0.75,
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
    num_classes: int = 19,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best of `tries` random boxes per image, as (top, left) int64 tensors of shape (B,) (0-d for (H,W)).

    Offsets are drawn as `top = randint(0, H − h + 1, (B, tries))` then `left = randint(0, W − w + 1,
    (B, tries))` from `generator`. A box scores Σ log(count) over its classes with count > 1, and 0
    unless it holds ≥ 2 classes and no class reaches `cat_max_ratio` of its non-ignored pixels; the
    first box with the highest score wins (the first box if all score 0). Labels outside
    [0, num_classes) count as ignored. An image no larger than the crop gets (0, 0).
    """
    single = labels.dim() == 2
    if single:
        labels = labels.unsqueeze(0)
    batch, height, width = labels.shape
    crop_h, crop_w = _pair(crop_size)
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    device = labels.device

    tops = _rng.integers(height - crop_h + 1, (batch, tries), generator, device)
    lefts = _rng.integers(width - crop_w + 1, (batch, tries), generator, device)

    # Class histogram of every candidate box at once: gather the box pixels, then count (box, class) keys.
    rows = tops[..., None, None] + torch.arange(crop_h, device=device)[:, None]
    cols = lefts[..., None, None] + torch.arange(crop_w, device=device)
    flat_index = (rows * width + cols).reshape(batch, -1)
    box_labels = labels.reshape(batch, -1).long().gather(1, flat_index).reshape(batch, tries, -1)
    box_labels = torch.where((box_labels >= 0) & (box_labels < num_classes), box_labels, num_classes)
    keys = box_labels + (num_classes + 1) * torch.arange(batch * tries, device=device).reshape(
        batch, tries, 1
    )
    counts = torch.zeros(batch * tries * (num_classes + 1), dtype=torch.long, device=device)
    keys = keys.reshape(-1)
    counts.scatter_add_(0, keys, torch.ones(1, dtype=torch.long, device=device).expand_as(keys))
    counts = counts.reshape(batch, tries, num_classes + 1)[..., :num_classes]

    present = (counts > 0).sum(-1)
    total = counts.sum(-1).clamp_min(1)
    balanced = (present > 1) & (counts.max(-1).values.float() / total.float() < cat_max_ratio)
    log_counts = torch.where(counts > 1, counts.clamp_min(1).float().log(), 0.0)
    scores = log_counts.sum(-1) * balanced
    best = scores.argmax(dim=1, keepdim=True)  # first maximum

    top, left = tops.gather(1, best).squeeze(1), lefts.gather(1, best).squeeze(1)
    if single:
        return top[0], left[0]
    return top, left


def crop(tensor: torch.Tensor, box: Box, size: tuple[int, int] | int) -> torch.Tensor:
    """Crop (B, ..., H, W) at per-image boxes ((B,) tensors) or (..., H, W) at one box (ints / 0-d).

    Works for images (B, C, H, W) and label or weight maps (B, H, W). Returns `tensor` itself when it
    is already no larger than `size`.
    """
    crop_h, crop_w = _pair(size)
    height, width = tensor.shape[-2:]
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    if (crop_h, crop_w) == (height, width):
        return tensor
    top, left = box
    if isinstance(top, int) and isinstance(left, int):
        return tensor[..., top : top + crop_h, left : left + crop_w]
    top, left = torch.as_tensor(top, device=tensor.device), torch.as_tensor(left, device=tensor.device)
    if top.dim() == 0:
        return crop(tensor.unsqueeze(0), (top.reshape(1), left.reshape(1)), (crop_h, crop_w))[0]
    rows = top[:, None] + torch.arange(crop_h, device=tensor.device)  # (B, h)
    cols = left[:, None] + torch.arange(crop_w, device=tensor.device)  # (B, w)
    # Gather rows then columns; works for any number of middle dims.
    middle = tensor.shape[1:-2]
    rows_index = rows.reshape(rows.shape[0], *([1] * len(middle)), crop_h, 1).expand(
        *tensor.shape[:-2], crop_h, width
    )
    out = tensor.gather(-2, rows_index)
    cols_index = cols.reshape(cols.shape[0], *([1] * len(middle)), 1, crop_w).expand(
        *tensor.shape[:-2], crop_h, crop_w
    )
    return out.gather(-1, cols_index)


def _pair(size: tuple[int, int] | int) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
