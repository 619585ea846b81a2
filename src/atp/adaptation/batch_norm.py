"""BatchNorm statistics re-estimated on target images (AdaBN, and the end-of-stage refresh) [I]."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batch_norms", "bn_estimation_mode", "forward_for_statistics", "reestimate_batch_norm"]


def batch_norms(model: nn.Module) -> Iterator[_BatchNorm]:
    """Every BatchNorm layer of ``model``."""
    return (module for module in model.modules() if isinstance(module, _BatchNorm))


def bn_estimation_mode(model: nn.Module) -> None:
    """BatchNorm layers in training mode, everything else in eval mode (no dropout or stochastic depth)."""
    model.eval()
    for norm in batch_norms(model):
        norm.train()


def forward_for_statistics(model: nn.Module, images: torch.Tensor) -> None:
    """One forward through every BatchNorm of a segmentor: encoder, decode head and projection head."""
    features = model.extract(images)
    model.decode(features)
    if getattr(model, "proj_head", None) is not None:
        model.project(features)


@contextmanager
def _cumulative_statistics(model: nn.Module) -> Iterator[None]:
    """Reset every BN's running statistics and average all batches until exit (``momentum=None``);
    the modules' modes and momenta are restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    norms = list(batch_norms(model))
    momenta = [norm.momentum for norm in norms]
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
        bn_estimation_mode(model)
        yield
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        for module, training in modes:
            module.training = training


@torch.no_grad()
def reestimate_batch_norm(model: nn.Module, images: Iterable[torch.Tensor]) -> int:
    """Replace every BatchNorm's running statistics by their average over ``images`` (batches); no weight
    changes. Returns the number of batches seen.

    Not ``torch.optim.swa_utils.update_bn``: that one runs ``model(x)`` in full training mode (dropout and
    drop-path on) and never reaches the projection head, whose statistics it would leave reset."""
    batches = iter(images)
    first = next(batches, None)
    if first is None:  # checked before the reset: the old statistics stay
        raise ValueError("reestimate_batch_norm needs at least one batch of images")
    seen = 0
    with _cumulative_statistics(model):
        for batch in itertools.chain([first], batches):
            forward_for_statistics(model, batch)
            seen += 1
    return seen
