"""``python -m tests.helpers.ddp_probe <atp.train overrides>``: the body of ``atp.train.main``, plus per-rank records.

Used by ``tests/run/test_ddp.py`` to look inside a real Lightning DDP run. Lightning re-launches this same
module for rank 1 (``LOCAL_RANK=1``), so every rank writes into ``$ATP_PROBE_DIR``:

* ``<stage>-rank<r>.pt`` when training ends: world size, step, the image names the rank trained on, the
  student, EMA teacher and prototype buffers, and the validation metrics;
* ``writes-rank<r>.txt``: every file the process created or opened for writing, renamed onto or
  removed (Python audit events; ``atp.atomic`` writes a temp file + ``os.replace``).

Nothing here changes what training does: the callback only reads, and the audit hook only records.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
import torch
from pytorch_lightning.callbacks import Callback

import atp.train
from atp.callbacks.divergence import batch_names
from atp.config import CONF_DIR

PROBE_DIR = Path(os.environ["ATP_PROBE_DIR"])
RANK = int(os.environ.get("LOCAL_RANK", "0"))  # set for the re-launched ranks from their start
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_writes = open(PROBE_DIR / f"writes-rank{RANK}.txt", "a", buffering=1)  # open for the life of the process


def _record(event: str, path) -> None:
    if isinstance(path, (str, bytes, os.PathLike)):
        _writes.write(f"{event}\t{os.path.abspath(os.fsdecode(path))}\n")


def _audit(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
        if writes:
            _record("write", path)
    elif event == "os.rename":
        _record("rename", args[1])
    elif event == "os.remove":
        _record("remove", args[0])


sys.addaudithook(_audit)


class DumpRankState(Callback):
    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.names: list[str] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.names += batch_names(batch)

    def on_train_end(self, trainer, module) -> None:
        state = {
            "rank": trainer.global_rank, "world_size": trainer.world_size, "step": trainer.global_step,
            "names": list(self.names), "val": dict(getattr(module, "last_val_metrics", None) or {}),
            "student": module.student.state_dict(),
        }
        for part in ("teacher", "prototypes"):
            if hasattr(module, part):
                state[part] = getattr(module, part).state_dict()
        torch.save(state, PROBE_DIR / f"{self.stage}-rank{trainer.global_rank}.pt")


def _run_stage_with_probe(run_stage):
    def wrapped(cfg, *args, **kwargs):
        return run_stage(cfg, *args, **kwargs, extra_callbacks=[DumpRankState(cfg.stage.name)])

    return wrapped


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg) -> None:
    atp.train.run_stage = _run_stage_with_probe(atp.train.run_stage)
    atp.train.main.__wrapped__(cfg)  # the undecorated entry point: same code path as python -m atp.train


if __name__ == "__main__":
    main()
