"""TENT (Wang et al., ICLR 2021) — a standard source-free baseline: entropy minimisation on the norm layers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from atp.adaptation import entropy_loss
from atp.stages.mean_teacher import MeanTeacherStage

#: the normalisation layers whose affine parameters TENT adapts
NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
#: the parts of a ``Segmentor`` on the prediction path (the projection head is not)
PREDICTION_PATH = ("encoder", "decode_head")


def norm_affine_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(name, parameter) of the weight and bias of every normalisation layer on ``model``'s prediction path:
    MiT's LayerNorms in ``encoder`` and the BatchNorms of ``decode_head``; names as in ``model``."""
    for part in PREDICTION_PATH:
        for module_name, module in getattr(model, part).named_modules():
            if isinstance(module, NORM_LAYERS):
                for param_name, param in module.named_parameters(recurse=False):
                    yield f"{part}.{module_name}.{param_name}", param


class TentStage(MeanTeacherStage):
    """L = entropy_weight · mean per-pixel entropy (nats) of the student's prediction on the target images.

    Updated parameters: ONLY the weight and bias of the normalisation layers on the prediction path, i.e.
    every LayerNorm of ``student.encoder`` (MiT) and every BatchNorm of ``student.decode_head``; all other
    parameters (convolutions, linear layers, attention, the classifier ``conv_seg``, the projection head)
    do not require grad and stay bit-identical. BatchNorms run in training mode (batch statistics), as TENT.
    No augmentation (``strong_aug`` probabilities 0 in ``conf/stage/tent.yaml``). The EMA teacher only
    chooses the class-balanced crop of inputs larger than the crop (ACDC), as in Align.
    """

    stage_name = "tent"
    predecessors = ("source",)
    data_mode = "target"
    default_init = "auto"
    chain_position = None  # a baseline, not part of ATP's chain
    baseline = True
    teaches_with_pseudo_labels = False

    def __init__(self, model: torch.nn.Module, entropy_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.entropy_weight = entropy_weight
        # frozen rather than only left out of the optimiser: no gradient is computed or kept for them
        self.student.requires_grad_(False)
        for _, param in norm_affine_parameters(self.student):
            param.requires_grad_(True)

    def trainable_named_parameters(self):
        """The affine parameters of the encoder's LayerNorms and the decoder's BatchNorms only."""
        return (("student." + name, param) for name, param in norm_affine_parameters(self.student))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.begin_step()
        images = self.target_crop(batch["img"])
        aug_generator = self.step_generator("cpu")
        params = self.strong_aug.draw(aug_generator)
        images = self.strong_aug.apply(images, params, aug_generator)  # the images themselves at p = 0
        logits = self.upsample(self.student(images), images.shape[-2:])
        entropy = entropy_loss(logits)
        self.manual_backward(self.entropy_weight * entropy)
        self.finish_step()
        self.log_terms({"loss/entropy": entropy})
