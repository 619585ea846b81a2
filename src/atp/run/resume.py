"""Which state a stage resumes from: ``ckpt_path``, ``resume=true``, or a SLURM requeue's checkpoints."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from omegaconf import DictConfig
from pytorch_lightning.plugins.environments import SLURMEnvironment

from atp.errors import UserError
from atp.models.weights import read_global_step

log = logging.getLogger(__name__)


def hpc_checkpoints(run_dir: Path) -> list[Path]:
    """``<run dir>/hpc_ckpt_<n>.ckpt``: what Lightning's SLURM requeue handler (SIGUSR1) saves, by ``n``."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("hpc_ckpt_*.ckpt")
             if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def resume_checkpoint(run_dir: Path, trust: bool = False) -> Path | None:
    """The newest state to resume from: the highest ``global_step`` among ``checkpoints/last.ckpt``
    and the ``hpc_ckpt_*.ckpt`` files (ties and unreadable files: ``last.ckpt`` first); None if none."""
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    candidates = ([last] if last.is_file() else []) + hpc_checkpoints(run_dir)
    if not candidates:
        return None
    steps = {path: read_global_step(path, trust=trust) for path in candidates}
    newest = max(candidates, key=lambda path: -1 if steps[path] is None else steps[path])
    if len(candidates) > 1:
        log.info("resume: %s (steps: %s)", newest, ", ".join(f"{p.name} {s}" for p, s in steps.items()))
    return newest


def choose_resume_path(cfg: DictConfig, run_dir: Path, previous: dict | None) -> str | None:
    """``ckpt_path`` if given; else, with ``resume=true`` or a SLURM requeue, the newest state of the run dir.

    On SLURM a requeued job re-runs the same command: it resumes an unfinished stage of its run dir
    (saved by the requeue signal or SIGTERM), and Lightning, which would restore an hpc_ckpt_*.ckpt by
    itself whenever ckpt_path is unset, is overruled so the newer of it and last.ckpt wins.
    """
    resume_path = cfg.ckpt_path
    unfinished = previous is not None and previous.get("status") != "complete"
    slurm_restore = SLURMEnvironment.detect() and (unfinished or bool(hpc_checkpoints(run_dir)))
    if resume_path is None and (cfg.resume or slurm_restore):
        newest = resume_checkpoint(run_dir, trust=bool(cfg.trust_checkpoints))
        resume_path = str(newest) if newest else None
        if resume_path is None:
            log.info("resume=true but %s has no checkpoints/last.ckpt or hpc_ckpt_*.ckpt: starting the stage "
                     "from the beginning", run_dir)
        elif not cfg.resume:
            log.info("SLURM requeue checkpoint in %s: resuming from %s", run_dir, resume_path)
    if resume_path is not None and not Path(resume_path).is_file():
        raise UserError(f"ckpt_path={resume_path}: no such file")
    return resume_path
