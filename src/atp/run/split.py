"""The easy/hard split Propagate trains on: given, already ranked in the run dir, or ranked now over all ranks."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from atp.adaptation import split_easy_hard, write_split
from atp.data import build_datamodule
from atp.errors import UserError
from atp.run.distributed import distributed_world, is_main_process
from atp.stages.ranking import rank_target_images

log = logging.getLogger(__name__)


def ensure_split(cfg: DictConfig, model: torch.nn.Module, run_dir: Path, split_dir: str | None) -> Path:
    """The easy/hard split: a given ``split_dir``, one already ranked in this run dir, or a new ranking."""
    if split_dir:
        path = Path(split_dir)
        if not (path / "easy.txt").is_file() or not (path / "hard.txt").is_file():
            raise UserError(f"split_dir={split_dir} must hold easy.txt and hard.txt (one image name per line)")
        return path
    path = run_dir / "splits"
    if (path / "easy.txt").is_file() and (path / "hard.txt").is_file():
        return path
    if distributed_world()[0] == 1 and not is_main_process():
        return wait_for_split(path)  # a rank launched before the process group exists
    datamodule = build_datamodule(cfg.dataset, mode="predict", seed=cfg.seed,
                                  **{**OmegaConf.to_container(cfg.data, resolve=True),
                                     "val_batch_size": cfg.stage.rank.batch_size})
    datamodule.setup("predict")
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu"
    return rank_split(model, datamodule.predict_dataloader(), path, easy_ratio=cfg.stage.rank.easy_ratio,
                      device=device)


def rank_split(
    model: torch.nn.Module, loader: DataLoader, out_dir: str | os.PathLike, easy_ratio: float = 0.3, device="cpu"
) -> Path:
    """:func:`atp.stages.ranking.make_split`, sharded over ``torch.distributed`` ranks.

    Rank ``r`` of ``w`` scores images ``r, r+w, …`` of the loader's dataset (no padding), the
    ``(name, score)`` lists are all-gathered, rank 0 writes the split, and all ranks meet at a
    barrier before anyone reads it. Without a process group this is the single-process ranking.
    """
    world, rank = distributed_world()
    if world > 1:
        shard = Subset(loader.dataset, range(rank, len(loader.dataset), world))
        loader = DataLoader(shard, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
                            collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)
    names, scores = rank_target_images(model, loader, device)
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (names, scores))
        names = [n for part_names, _ in gathered for n in part_names]
        scores = [s for _, part_scores in gathered for s in part_scores]
    out_dir = Path(out_dir)
    failure = None
    if rank == 0:
        try:
            _write_ranked(names, scores, out_dir, easy_ratio)
        except RuntimeError as err:
            failure = str(err)
    if world > 1:
        status = [failure]
        dist.broadcast_object_list(status, src=0)
        failure = status[0]
        dist.barrier()
    if failure:
        raise RuntimeError(failure)
    return out_dir


def _write_ranked(names: list[str], scores: list[float], out_dir: Path, easy_ratio: float) -> None:
    if not names:
        raise RuntimeError("entropy ranking found no target-train images; check the dataset with atp.data.check")
    if len(set(names)) != len(names):
        raise RuntimeError("entropy ranking scored an image twice; the rank shards overlap")
    easy, hard = split_easy_hard(names, scores, easy_ratio=easy_ratio)
    if not easy or not hard:
        raise RuntimeError(f"the easy/hard split of {len(names)} images with easy_ratio={easy_ratio} leaves one side empty")
    write_split(out_dir, easy, hard, scores=dict(zip(names, scores, strict=True)))
    log.info("entropy ranking: %d easy / %d hard images → %s", len(easy), len(hard), out_dir)


def wait_for_split(out_dir: str | os.PathLike, timeout_s: float = 3600.0, poll_s: float = 1.0) -> Path:
    """Wait until rank 0 has written ``easy.txt`` and ``hard.txt`` (ranks started without a process group)."""
    out_dir = Path(out_dir)
    deadline = time.monotonic() + timeout_s
    while not ((out_dir / "easy.txt").is_file() and (out_dir / "hard.txt").is_file()):
        if time.monotonic() > deadline:
            raise UserError(f"rank 0 did not write the easy/hard split to {out_dir} within {timeout_s:.0f} s")
        time.sleep(poll_s)
    return out_dir
