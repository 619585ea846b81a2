"""Who is the main process, and the one helper through which the run layer writes shared files.

Inside ``fit`` callbacks use ``trainer.is_global_zero``. Outside it (before the trainer exists, or between
the stages of a chain) the answer comes from the process group when one is initialised, else from
Lightning's ``rank_zero_only.rank``, which Lightning sets at import from the launcher's environment
(``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``…) and from the strategy once DDP starts: a rank > 0 writes
nothing shared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist
from pytorch_lightning.utilities.rank_zero import rank_zero_only

T = TypeVar("T")


def distributed_world() -> tuple[int, int]:
    """(world size, rank) of an initialised process group, else (1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def is_main_process() -> bool:
    """Rank 0 of the process group, or — before one exists — Lightning's ``rank_zero_only.rank == 0``."""
    world, rank = distributed_world()
    if world > 1:
        return rank == 0
    return int(getattr(rank_zero_only, "rank", 0) or 0) == 0


def on_main_process(write: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``write(*args, **kwargs)`` on the main process only (None elsewhere): every shared file outside ``fit``."""
    return write(*args, **kwargs) if is_main_process() else None
