"""Segmentation networks (MiT encoder, DAFormer decoder, projection head) and checkpoint I/O."""

from atp.models.decoder import DAFormerHead
from atp.models.encoder import MiTEncoder
from atp.models.proj_head import ProjectionHead
from atp.models.segmentor import Segmentor, build_segmentor
from atp.models.weights import CheckpointError, load_into, load_weights, read_checkpoint

__all__ = [
    "CheckpointError",
    "DAFormerHead",
    "MiTEncoder",
    "ProjectionHead",
    "Segmentor",
    "build_segmentor",
    "load_into",
    "load_weights",
    "read_checkpoint",
]
