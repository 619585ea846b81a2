"""Key translation for MiT weights in the formats users download: Hugging Face ``transformers`` SegFormer
files and segmentation-models-pytorch (smp) models. Pure functions on state dicts; ``atp.models.weights``
reads the files and calls them.

- ``hf-segformer``: what ``save_pretrained`` writes for ``SegformerModel`` (``encoder.*``),
  ``SegformerForImageClassification`` (``segformer.encoder.*`` + ``classifier.*``, e.g. the hub's
  ``nvidia/mit-b*``) and ``SegformerForSemanticSegmentation`` (``segformer.encoder.*`` + ``decode_head.*``).
  Names follow the *files* (transformers 5 uses other names in memory). ``attention.self.key`` and
  ``.value`` become the fused ``attn.kv`` (key rows first, as SegFormer's ``kv`` projection splits them).
- ``smp``: an smp ``Segformer``/``Unet``/… with a ``mit_b*`` encoder (``encoder.*`` in the official MiT
  names, plus ``decoder.*``, ``segmentation_head.*``, optionally ``classification_head.*``).

Only the encoder transfers: the transformers all-MLP decode head and smp's decoders are other networks
than atp's DAFormer head, so they are dropped with a warning.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from atp.errors import CheckpointError

__all__ = ["HF_SEGFORMER", "MIT_KEY", "SMP", "from_hf_segformer", "from_smp", "is_hf_segformer", "is_smp", "top_level"]

HF_SEGFORMER = "hf-segformer"
SMP = "smp"

_HF_TOP_LEVEL = {"segformer", "decode_head", "classifier"}
_HF_ENCODER_KEY = re.compile(r"^encoder\.(block\.\d+\.\d+|patch_embeddings\.\d+|layer_norm\.\d+)\.")
_HF_PATCH_EMBED = re.compile(r"^encoder\.patch_embeddings\.([0-3])\.(proj|layer_norm)\.(weight|bias)$")
_HF_STAGE_NORM = re.compile(r"^encoder\.layer_norm\.([0-3])\.(weight|bias)$")
_HF_BLOCK = re.compile(r"^encoder\.block\.([0-3])\.(\d+)\.(.+)\.(weight|bias)$")
#: transformers block sub-module → smp/NVlabs name (``key``/``value`` are fused into ``attn.kv`` apart).
_HF_BLOCK_LAYERS = {
    "layer_norm_1": "norm1",
    "attention.self.query": "attn.q",
    "attention.self.sr": "attn.sr",  # only in stages with a spatial-reduction ratio > 1
    "attention.self.layer_norm": "attn.norm",  # idem
    "attention.output.dense": "attn.proj",
    "layer_norm_2": "norm2",
    "mlp.dense1": "mlp.fc1",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
    "mlp.dense2": "mlp.fc2",
}
_HF_REDUCTION_LAYERS = ("attention.self.sr", "attention.self.layer_norm")
_HF_KV_LAYERS = ("attention.self.key", "attention.self.value")
_SMP_TOP_LEVEL = {"encoder", "decoder", "segmentation_head", "classification_head"}
#: A key of the official MiT (NVlabs ``mit_b*.pth``) encoder, also smp's encoder names.
MIT_KEY = re.compile(r"^(patch_embed[1-4]|block[1-4]|norm[1-4])\.")


def top_level(state: Iterable[str]) -> set[str]:
    """The first dotted component of every key."""
    return {key.split(".", 1)[0] for key in state}


def is_hf_segformer(state: Mapping[str, object]) -> bool:
    """True for a ``transformers`` SegFormer state dict as ``save_pretrained`` writes it."""
    prefixes = top_level(state)
    if prefixes == {"encoder"}:
        return any(_HF_ENCODER_KEY.match(key) for key in state)
    return "segformer" in prefixes and prefixes <= _HF_TOP_LEVEL


def is_smp(state: Mapping[str, object]) -> bool:
    """True for an smp model state dict (encoder plus an smp decoder/segmentation head)."""
    prefixes = top_level(state)
    return "encoder" in prefixes and prefixes <= _SMP_TOP_LEVEL and bool(prefixes & {"decoder", "segmentation_head"})


def from_hf_segformer(path: Path, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``encoder.*`` in atp names from a transformers SegFormer state dict; strict: every encoder key must
    be known and every block complete (the missing transformers key is named), the heads are dropped."""
    encoder = {}
    for key, value in state.items():
        if key.startswith("segformer."):
            encoder[key.removeprefix("segformer.")] = value
        elif key.startswith("encoder."):
            encoder[key] = value
    prefix = "segformer." if any(key.startswith("segformer.") for key in state) else ""

    def refuse(problem: str, hf_key: str) -> CheckpointError:
        return CheckpointError(f"{path}: transformers SegFormer checkpoint {problem}: {prefix}{hf_key}")

    converted: dict[str, torch.Tensor] = {}
    blocks: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for key, value in encoder.items():
        if match := _HF_PATCH_EMBED.match(key):
            stage, layer, kind = match.groups()
            converted[f"encoder.patch_embed{int(stage) + 1}.{'proj' if layer == 'proj' else 'norm'}.{kind}"] = value
        elif match := _HF_STAGE_NORM.match(key):
            converted[f"encoder.norm{int(match[1]) + 1}.{match[2]}"] = value
        elif (match := _HF_BLOCK.match(key)) and (match[3] in _HF_BLOCK_LAYERS or match[3] in _HF_KV_LAYERS):
            blocks.setdefault((int(match[1]), int(match[2])), {})[f"{match[3]}.{match[4]}"] = value
        else:
            raise refuse("has an unexpected key", key)
    for stage in range(4):
        for layer, kind in (("proj", "weight"), ("proj", "bias"), ("layer_norm", "weight"), ("layer_norm", "bias")):
            if f"encoder.patch_embed{stage + 1}.{'proj' if layer == 'proj' else 'norm'}.{kind}" not in converted:
                raise refuse("misses", f"encoder.patch_embeddings.{stage}.{layer}.{kind}")
        for kind in ("weight", "bias"):
            if f"encoder.norm{stage + 1}.{kind}" not in converted:
                raise refuse("misses", f"encoder.layer_norm.{stage}.{kind}")
    for stage in range(4):
        depth = max((index + 1 for s, index in blocks if s == stage), default=0)
        if depth == 0:
            raise refuse("misses", f"encoder.block.{stage}.0.layer_norm_1.weight")
        reduced = any(f"{layer}.weight" in blocks.get((stage, i), {}) or f"{layer}.bias" in blocks.get((stage, i), {})
                      for i in range(depth) for layer in _HF_REDUCTION_LAYERS)
        for index in range(depth):
            block = blocks.get((stage, index), {})
            name = f"encoder.block.{stage}.{index}"
            layers = [*_HF_BLOCK_LAYERS, *_HF_KV_LAYERS]
            for layer in layers if reduced else [n for n in layers if n not in _HF_REDUCTION_LAYERS]:
                for kind in ("weight", "bias"):
                    if f"{layer}.{kind}" not in block:
                        raise refuse("misses", f"{name}.{layer}.{kind}")
            ours = f"encoder.block{stage + 1}.{index}"
            for layer, target in _HF_BLOCK_LAYERS.items():
                for kind in ("weight", "bias"):
                    if f"{layer}.{kind}" in block:
                        converted[f"{ours}.{target}.{kind}"] = block[f"{layer}.{kind}"]
            for kind in ("weight", "bias"):
                key, value = block[f"attention.self.key.{kind}"], block[f"attention.self.value.{kind}"]
                if key.shape != value.shape:
                    raise refuse(f"has key and value of different shapes ({list(key.shape)} and "
                                 f"{list(value.shape)})", f"{name}.attention.self.value.{kind}")
                converted[f"{ours}.attn.kv.{kind}"] = torch.cat([key, value], dim=0)
    if any(key.startswith("decode_head.") for key in state):
        warnings.warn(f"{path}: the transformers SegFormer decode head (all-MLP) is not atp's DAFormer head and "
                      "is not transferable: only the encoder is taken", stacklevel=3)
    return converted


def from_smp(path: Path, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``encoder.*`` of an smp model with a MiT encoder (the names are already atp's); heads dropped."""
    encoder = {key: value for key, value in state.items() if key.startswith("encoder.")}
    foreign = [key for key in encoder if not MIT_KEY.match(key.removeprefix("encoder."))]
    if foreign:
        raise CheckpointError(f"{path}: segmentation-models-pytorch checkpoint whose encoder is not a MiT "
                              f"(mit_b0…mit_b5): unexpected key {foreign[0]}")
    warnings.warn(f"{path}: the segmentation-models-pytorch decoder is not atp's DAFormer head and is not "
                  "transferable: only the MiT encoder is taken", stacklevel=3)
    return encoder
