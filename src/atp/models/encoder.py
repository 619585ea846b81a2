"""MiT (SegFormer Mix Transformer) encoder, spec §3.1.

The transformer itself is segmentation-models-pytorch's ``MixVisionTransformer``; this module only
picks a variant from smp's registry, sets the drop-path rate and exposes the four feature maps.
Subclassing (rather than wrapping) keeps the state-dict keys identical to the official NVlabs
``mit_b*.pth`` files (``patch_embed1.proj.weight``, ``block3.17.attn.kv.weight``, ``norm4.bias`` ...).
"""

from __future__ import annotations

import copy

import torch
from segmentation_models_pytorch.encoders.mix_transformer import (
    MixVisionTransformer,
    mix_transformer_encoders,
)
from torch.overrides import TorchFunctionMode

__all__ = ["MiTEncoder", "mit_variant_names", "mit_variant_params"]


def mit_variant_names() -> list[str]:
    """Names of the MiT variants smp knows (``mit_b0`` … ``mit_b5``)."""
    return sorted(mix_transformer_encoders)


def mit_variant_params(name: str) -> dict:
    """Constructor arguments of ``MixVisionTransformer`` for variant ``name`` (a fresh copy)."""
    if name not in mix_transformer_encoders:
        raise ValueError(f"unknown MiT variant {name!r}; choose one of {mit_variant_names()}")
    params = copy.deepcopy(mix_transformer_encoders[name]["params"])
    params.pop("out_channels", None)  # smp's list includes the input and a dummy stage
    return params


class _ParametersOnMeta(TorchFunctionMode):
    """Send ``torch.empty`` calls without a device (how nn layers allocate parameters) to the meta device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.empty and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


class MiTEncoder(MixVisionTransformer):
    """Mix Transformer encoder returning ``[1/4, 1/8, 1/16, 1/32]`` feature maps (NCHW).

    ``drop_path_rate`` is the stochastic-depth rate of the last block; smp spreads it linearly from 0
    over all blocks (52 for B5), as SegFormer does.
    """

    def __init__(self, name: str = "mit_b5", drop_path_rate: float = 0.1) -> None:
        params = mit_variant_params(name)
        params["drop_path_rate"] = float(drop_path_rate)
        # smp re-initialises every layer once per nesting level (up to 4 times, ~80 % of the build time
        # for B5). Build the layers on the meta device, where that is free, then allocate and run smp's
        # initialiser once: the same final distribution as smp's own build.
        with _ParametersOnMeta():
            super().__init__(**params)
        self.to_empty(device=torch.get_default_device())
        self.apply(self._init_weights)
        self.variant = name
        self.out_channels: tuple[int, ...] = tuple(params["embed_dims"])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_features(x)

    def drop_path_rates(self) -> list[float]:
        """Stochastic-depth rate of every block, in order (0 where the block has no DropPath)."""
        blocks = [*self.block1, *self.block2, *self.block3, *self.block4]
        return [float(getattr(block.drop_path, "drop_prob", 0.0)) for block in blocks]
