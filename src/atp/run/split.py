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

from atp.adaptation.ranking import rank_target_images
from atp.data import build_datamodule
from atp.data.splits import EASY_FILE, HARD_FILE, has_split, write_split
from atp.errors import UserError
from atp.run.distributed import distributed_world, is_main_process

log = logging.getLogger(__name__)


def ensure_split(cfg: DictConfig, model: torch.nn.Module, run_dir: Path, split_dir: str | None) -> Path:
    """The easy/hard split: a given ``split_dir``, one already ranked in this run dir, or a new ranking."""
    if split_dir:
        path = Path(split_dir)
        if not has_split(path):
            raise UserError(f"split_dir={split_dir} must hold {EASY_FILE} and {HARD_FILE} (one image name per line)")
        return path
    path = run_dir / "splits"
    if has_split(path):
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
    """The entropy ranking and easy/hard split (:func:`atp.adaptation.ranking.rank_target_images`,
    :func:`atp.data.splits.write_split`), sharded over ``torch.distributed`` ranks.

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
        except UserError as err:  # every rank raises it, none waits at the barrier
            failure = str(err)
    if world > 1:
        status = [failure]
        dist.broadcast_object_list(status, src=0)
        failure = status[0]
        dist.barrier()
    if failure:
        raise UserError(failure)
    return out_dir


def _write_ranked(names: list[str], scores: list[float], out_dir: Path, easy_ratio: float) -> None:
    easy, hard = write_split(out_dir, names, scores, easy_ratio=easy_ratio)
    log.info("entropy ranking: %d easy / %d hard images → %s", len(easy), len(hard), out_dir)


def wait_for_split(out_dir: str | os.PathLike, timeout_s: float = 3600.0, poll_s: float = 1.0) -> Path:
    """Wait until rank 0 has written ``easy.txt`` and ``hard.txt`` (ranks started without a process group)."""
    out_dir = Path(out_dir)
    deadline = time.monotonic() + timeout_s
    while not has_split(out_dir):
        if time.monotonic() > deadline:
            raise UserError(f"rank 0 did not write the easy/hard split to {out_dir} within {timeout_s:.0f} s")
        time.sleep(poll_s)
    return out_dir
