"""Entropy ranking of target images (§7): per-image scores, and all target-train images scored.

The easy/hard split made from the scores, and its files, are :mod:`atp.data.splits`.
"""

from __future__ import annotations

import torch

from atp.progress import tracked

from .losses import normalized_entropy

__all__ = ["image_entropy_scores", "rank_target_images"]


@torch.no_grad()
def image_entropy_scores(logits: torch.Tensor) -> torch.Tensor:
    """(B,) mean normalised pixel entropy of logits (B, C, H, W).

    The released script also averages over classes (a 1/C factor, #20); the order is the same.
    """
    return normalized_entropy(logits).flatten(1).mean(1)


@torch.no_grad()
def rank_target_images(model: torch.nn.Module, loader, device: torch.device | str = "cpu"
                       ) -> tuple[list[str], list[float]]:
    """``(names, scores)``: the mean normalised pixel entropy of every image ``loader`` yields.

    The model runs in eval mode (deterministic; spec §14 #23) on ``device`` and is put back in the
    mode it had. Batches are dicts with ``img`` and ``name``.
    """
    was_training = model.training
    model.eval().to(device)
    names: list[str] = []
    scores: list[torch.Tensor] = []
    try:
        for batch in tracked(loader, "entropy ranking", transient=True):
            logits = model(batch["img"].to(device, non_blocking=True))
            scores.append(image_entropy_scores(logits).float().cpu())
            names.extend(batch["name"])
    finally:
        model.train(was_training)
    flat = torch.cat(scores).tolist() if scores else []
    return names, flat
