"""Encoder + decoder (+ optional projection head), and the builder the Hydra model configs call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atp.models.decoder import DAFormerHead
from atp.models.encoder import MiTEncoder
from atp.models.proj_head import ProjectionHead

__all__ = ["Segmentor", "build_segmentor"]


class Segmentor(nn.Module):
    """Segmentation network; parameter names start with ``encoder.``, ``decode_head.``, ``proj_head.``."""

    def __init__(self, encoder: nn.Module, decode_head: nn.Module, proj_head: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.decode_head = decode_head
        self.proj_head = proj_head

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder feature maps at 1/4 … 1/32."""
        return self.encoder(x)

    def decode(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class logits at 1/4 of the input resolution."""
        return self.decode_head(feats)

    def project(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Unit-norm embeddings at 1/4 resolution (needs a projection head)."""
        if self.proj_head is None:
            raise RuntimeError("this Segmentor was built without a projection head (proj_head=None)")
        return self.proj_head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.extract(x))

    def predict(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """Logits bilinearly upsampled (align_corners False) to ``size`` (default: the input size)."""
        size = tuple(x.shape[-2:]) if size is None else tuple(size)
        return F.interpolate(self(x), size=size, mode="bilinear", align_corners=False)


def build_segmentor(
    encoder: str = "mit_b5",
    num_classes: int = 19,
    drop_path_rate: float = 0.1,
    decoder: Mapping | None = None,
    proj_head: Mapping | None = None,
    imagenet_init: str | None = None,
) -> Segmentor:
    """Build MiT encoder + DAFormer head (+ projection head when ``proj_head`` is a dict).

    ``decoder`` holds ``DAFormerHead`` options (``embed_dim``, ``dilations``, ``dropout``); ``proj_head``
    holds ``ProjectionHead`` options (``mid_channels``, ``out_channels``) or is None for no head.
    ``imagenet_init`` (path to an official ``mit_b*.pth``) is only accepted so that the config key can sit
    in ``conf/model``: building stays free of file access, and the caller loads it (``atp.run.init_weights``).
    """
    del imagenet_init
    mit = MiTEncoder(encoder, drop_path_rate=drop_path_rate)
    decoder_options = _plain_options(decoder)
    decode_head = DAFormerHead(mit.out_channels, num_classes=num_classes, **decoder_options)
    projection = None
    if proj_head is not None:
        projection = ProjectionHead(mit.out_channels, **_plain_options(proj_head))
    return Segmentor(mit, decode_head, projection)


def _plain_options(options: Mapping | None) -> dict:
    """Hydra passes DictConfig/ListConfig; turn them into a dict with list values as tuples."""
    plain = {}
    for key, value in dict(options or {}).items():
        is_list = isinstance(value, Sequence) and not isinstance(value, str)
        plain[str(key)] = tuple(value) if is_list else value
    return plain
