"""Class prototypes: ratio-pooled label downscaling and the cumulative mean/variance estimator (§8.3)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["downscale_labels", "PrototypeEstimator"]


def downscale_labels(
    labels: torch.Tensor,
    factor: int = 4,
    min_ratio: float = 0.75,
    num_classes: int = 19,
    ignore_index: int = 255,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Majority label of each factor×factor cell of (B, H, W) labels, `ignore_index` where unsure.

    A cell becomes `ignore_index` when its most frequent label (ignored pixels counted as an extra
    class; ties go to the lower class id) covers < `min_ratio` of the cell or is the ignore class.
    The output is (H // factor, W // factor), or `size` (e.g. the feature map's), in which case the
    labels are cropped or padded with ignore at the bottom/right to size·factor first.
    """
    if factor == 1 and size is None:
        return labels.clone()
    batch, height, width = labels.shape
    out_h, out_w = (height // factor, width // factor) if size is None else size
    labels = labels.long()[:, : out_h * factor, : out_w * factor]
    pad_h, pad_w = out_h * factor - labels.shape[1], out_w * factor - labels.shape[2]
    if pad_h or pad_w:
        labels = F.pad(labels, (0, pad_w, 0, pad_h), value=ignore_index)

    cells = labels.reshape(batch, out_h, factor, out_w, factor).permute(0, 1, 3, 2, 4)
    cells = cells.reshape(batch, out_h, out_w, factor * factor)
    cells = torch.where((cells >= 0) & (cells < num_classes), cells, num_classes)
    slots = torch.arange(num_classes + 1, device=labels.device)
    counts = (cells.unsqueeze(-1) == slots).sum(-2)  # (B, h, w, C + 1)
    majority, winner = counts.max(-1)
    unsure = (winner == num_classes) | (majority.float() / (factor * factor) < min_ratio)
    return winner.masked_fill(unsure, ignore_index)


class PrototypeEstimator(nn.Module):
    """Running per-class mean and diagonal variance of features (cumulative, not EMA).

    Buffers (saved in checkpoints): `mean` (C, D), `var` (C, D) float32, `count` (C,) int64.
    """

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.register_buffer("mean", torch.zeros(num_classes, feat_dim))
        self.register_buffer("var", torch.zeros(num_classes, feat_dim))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def reset(self) -> None:
        self.mean.zero_()
        self.var.zero_()
        self.count.zero_()

    @torch.no_grad()
    def update(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Fold in features (B, D, h, w) of pixels with labels (B, h, w) in [0, C); others are skipped.

        Per class with n new and N seen samples, batch mean a and (population) variance v,
        ω = n / (n + N): var ← (1−ω) var + ω v + ω(1−ω)(mean − a)², mean ← (1−ω) mean + ω a, N ← N + n.
        Under torch.distributed the per-class sums, sums of squares and counts are all-reduced first,
        so every rank applies the update of the union of all ranks' batches.
        """
        dim = feats.shape[1]
        flat_feats = feats.detach().permute(0, 2, 3, 1).reshape(-1, dim).double()
        flat_labels = labels.reshape(-1).long()
        valid = (flat_labels >= 0) & (flat_labels < self.num_classes)
        slots = torch.where(valid, flat_labels, self.num_classes)
        one_hot = F.one_hot(slots, self.num_classes + 1)[:, : self.num_classes].double()  # (N, C)

        stats = torch.cat(
            (one_hot.t() @ flat_feats, one_hot.t() @ flat_feats.square(), one_hot.sum(0, keepdim=True).t()),
            dim=1,
        )  # (C, 2D + 1): sums, sums of squares, counts
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        sums, square_sums, counts = stats[:, :dim], stats[:, dim : 2 * dim], stats[:, 2 * dim]

        safe_counts = counts.clamp_min(1.0).unsqueeze(1)
        batch_mean = sums / safe_counts
        batch_var = (square_sums / safe_counts - batch_mean.square()).clamp_min(0.0)
        seen = self.count.double()
        total = seen + counts
        omega = torch.where(total > 0, counts / total.clamp_min(1.0), 0.0).unsqueeze(1)

        old_mean, old_var = self.mean.double(), self.var.double()
        new_var = (
            (1 - omega) * old_var + omega * batch_var + omega * (1 - omega) * (old_mean - batch_mean).square()
        )
        new_mean = (1 - omega) * old_mean + omega * batch_mean
        self.var.copy_(new_var)
        self.mean.copy_(new_mean)
        self.count.add_(counts.round().long())
