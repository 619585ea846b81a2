"""DAFormer decoder with separable-ASPP context-aware fusion, spec §3.2.

Submodule names follow mmseg's ``DAFormerHead`` (and mmcv's ``ConvModule``: ``conv`` + ``bn``), so an
mmseg state dict converts by renaming its ``decode_head.`` prefix only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBNReLU", "DAFormerHead", "SeparableASPP", "resize_to"]


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (align_corners False) to ``size``; a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Module):
    """Conv (no bias) → BatchNorm → ReLU, named like mmcv's ``ConvModule`` (``conv``, ``bn``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        padding = dilation * (kernel_size // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")  # mmcv's default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class SeparableConvBNReLU(nn.Module):
    """Depth-wise dilated 3×3 ConvBNReLU followed by a point-wise 1×1 ConvBNReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__()
        self.depthwise_conv = ConvBNReLU(in_channels, in_channels, 3, dilation=dilation, groups=in_channels)
        self.pointwise_conv = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class SeparableASPP(nn.Module):
    """ASPP without image pooling: a 1×1 branch for dilation 1, separable 3×3 branches otherwise,
    concatenated and fused by a 3×3 bottleneck (mmseg ``ASPPWrapper`` with ``sep=True, pool=False``)."""

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            ConvBNReLU(in_channels, channels, 1) if d == 1 else SeparableConvBNReLU(in_channels, channels, d)
            for d in dilations
        )
        self.bottleneck = ConvBNReLU(len(dilations) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp_modules], dim=1))


class TokenEmbedding(nn.Module):
    """Per-level Linear on the flattened tokens (mmseg's ``MLP`` with a ``proj`` Linear)."""

    def __init__(self, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        tokens = self.proj(x.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(batch, -1, height, width)


class DAFormerHead(nn.Module):
    """Embed each level to ``embed_dim``, resize to 1/4, concatenate, sep-ASPP fusion, classify.

    ``forward(feats)`` takes the encoder's 4 maps and returns logits at the resolution of ``feats[0]``.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int = 19, embed_dim: int = 256,
                 dilations: Sequence[int] = (1, 6, 12, 18), dropout: float = 0.1) -> None:
        super().__init__()
        self.in_channels = tuple(int(c) for c in in_channels)
        self.num_classes = int(num_classes)
        self.embed_layers = nn.ModuleList(TokenEmbedding(c, embed_dim) for c in self.in_channels)
        self.fuse_layer = SeparableASPP(embed_dim * len(self.in_channels), embed_dim, tuple(dilations))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(embed_dim, self.num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(feats) != len(self.embed_layers):
            raise ValueError(f"DAFormerHead expects {len(self.embed_layers)} feature maps, got {len(feats)}")
        size = feats[0].shape[-2:]
        embedded = [resize_to(embed(f), size) for embed, f in zip(self.embed_layers, feats, strict=True)]
        return self.conv_seg(self.dropout(self.fuse_layer(torch.cat(embedded, dim=1))))
