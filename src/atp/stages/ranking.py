"""Entropy ranking of all target-train images → easy/hard split for Propagate (spec §7)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm import tqdm

from atp.adaptation import image_entropy_scores, split_easy_hard, write_split

log = logging.getLogger(__name__)


@torch.no_grad()
def rank_target_images(model: torch.nn.Module, loader, device: torch.device | str = "cpu") -> tuple[list[str], list[float]]:
    """Mean normalised pixel entropy of every image, in eval mode (deterministic; spec §14 #23)."""
    was_training = model.training
    model.eval().to(device)
    names: list[str] = []
    scores: list[torch.Tensor] = []
    try:
        for batch in tqdm(loader, desc="entropy ranking", unit="img", leave=False):
            logits = model(batch["img"].to(device, non_blocking=True))
            scores.append(image_entropy_scores(logits).float().cpu())
            names.extend(batch["name"])
    finally:
        model.train(was_training)
    flat = torch.cat(scores).tolist() if scores else []
    return names, flat


def make_split(model: torch.nn.Module, loader, out_dir: str | Path, easy_ratio: float = 0.3, device="cpu") -> Path:
    """Rank, split (lowest ``easy_ratio`` = easy) and write ``easy.txt``/``hard.txt``/``ranking.csv``."""
    names, scores = rank_target_images(model, loader, device)
    if not names:
        raise RuntimeError("entropy ranking found no target-train images; check the dataset with atp.data.check")
    easy, hard = split_easy_hard(names, scores, easy_ratio=easy_ratio)
    if not easy or not hard:
        raise RuntimeError(
            f"the easy/hard split of {len(names)} images with easy_ratio={easy_ratio} leaves one side empty"
        )
    write_split(out_dir, easy, hard, scores=dict(zip(names, scores, strict=True)))
    log.info("entropy ranking: %d easy / %d hard images → %s", len(easy), len(hard), out_dir)
    return Path(out_dir)
