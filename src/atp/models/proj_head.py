"""Projection head for the contrastive loss (SePiCo ``ProjHead``), spec §3.3."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atp.models.decoder import ConvBNReLU, resize_to

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Module):
    """Resize-concat the encoder levels to 1/4, two 1×1 ConvBNReLU, L2-normalise over channels.

    Names follow mmseg's auxiliary head (``convs.0``, ``convs.1`` with ``conv`` + ``bn``).
    ``forward(feats)`` returns a ``(B, out_channels, H/4, W/4)`` unit-norm embedding.
    """

    def __init__(self, in_channels: Sequence[int], mid_channels: int = 256, out_channels: int = 512) -> None:
        super().__init__()
        self.in_channels = tuple(int(c) for c in in_channels)
        self.out_channels = int(out_channels)
        self.convs = nn.Sequential(
            ConvBNReLU(sum(self.in_channels), mid_channels, 1),
            ConvBNReLU(mid_channels, self.out_channels, 1),
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        x = torch.cat([resize_to(f, size) for f in feats], dim=1)
        return F.normalize(self.convs(x), p=2, dim=1)
