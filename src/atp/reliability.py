"""Reliability and scale-out: atomic checkpoint files, a divergence guard, DDP-correct entropy ranking.

* :class:`AtomicCheckpointIO` — every checkpoint is written to a temp file beside its destination,
  fsynced and ``os.replace``d, so a kill or a full disk never leaves a half-written ``last.ckpt``.
* :class:`DivergenceGuard` — stops a stage at the first non-finite gradient with a post-mortem
  checkpoint and the names of the images in the offending batch.
* :class:`SigtermCheckpoint` — on SIGTERM, ``last.ckpt`` holds the last finished step.
* :class:`RequeueSignal` — the same stop and save on a scheduler's requeue signal (submitit's SIGUSR2),
  then the handler it replaced (submitit's requeue) runs.
* :func:`rank_split` — the easy/hard entropy ranking sharded over ``torch.distributed`` ranks,
  gathered and written by rank 0 only; identical to the single-process split.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import pickle
import signal
import threading
import time
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, Subset

from atp.adaptation.ranking import rank_target_images
from atp.atomic import atomic_write
from atp.data.splits import has_split, write_split
from atp.errors import CheckpointReadError, CheckpointWriteError, DivergenceError, UserError

log = logging.getLogger(__name__)

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointReadError",
    "CheckpointWriteError",
    "DivergenceError",
    "DivergenceGuard",
    "RequeueSignal",
    "SigtermCheckpoint",
    "distributed_world",
    "is_rank_zero",
    "rank_split",
    "wait_for_split",
]


# ---------------------------------------------------------------------- atomic checkpoints
def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into ``.<name>.<random>.tmp`` in the destination directory, fsync, ``os.replace``.

    The temp name matches :func:`atp.atomic.clean_stale_temp_files`, which ``run_stage`` calls at
    start, so the leftovers of a killed writer disappear on the next run. A failed write (e.g. a
    full disk) removes the temp file and raises :class:`CheckpointWriteError`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        try:
            atomic_write(path, lambda handle: self.write(checkpoint, handle))
        except OSError as err:
            raise self._error(path, err) from err
        _fsync_directory(path.parent)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None) -> dict[str, Any]:
        """Lightning's loader, with a one-line error for truncated or corrupt files."""
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            raise CheckpointReadError(
                f"checkpoint {path} cannot be read (truncated or corrupt: {str(err).splitlines()[0]}); "
                "delete it to start the stage again, or pass ckpt_path=<an intact copy>"
            ) from err

    @staticmethod
    def write(checkpoint: dict[str, Any], handle) -> None:
        """Serialise ``checkpoint`` into an open binary file (a seam for fault-injection tests)."""
        torch.save(checkpoint, handle)

    @staticmethod
    def _error(path: Path, err: OSError) -> CheckpointWriteError:
        reason = err.strerror or str(err)
        hint = " — free some space" if err.errno == errno.ENOSPC else ""
        kept = "the previous file is unchanged" if path.exists() else "nothing was written"
        return CheckpointWriteError(f"could not write checkpoint {path} ({reason}){hint}; {kept}")


# ---------------------------------------------------------------------- divergence guard
def batch_names(batch: Any) -> list[str]:
    """Image names in a batch: ``batch['name']`` or those of nested streams (``easy``/``hard``)."""
    if isinstance(batch, Mapping):
        if "name" in batch:
            names = batch["name"]
            return [str(n) for n in (names if isinstance(names, (list, tuple)) else [names])]
        return [f"{key}:{name}" for key, value in batch.items() for name in batch_names(value)]
    if isinstance(batch, (list, tuple)):
        return [name for item in batch for name in batch_names(item)]
    return []


def non_finite_parameters(named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> list[str]:
    """Names of parameters whose gradient has a NaN/Inf (one host sync when all are finite)."""
    named = [(name, p.grad) for name, p in named_params if p.grad is not None]
    if not named:
        return []
    norms = torch._foreach_norm([grad for _, grad in named])
    if bool(torch.stack([n.float() for n in norms]).isfinite().all()):
        return []
    return [name for (name, _), norm in zip(named, norms, strict=True) if not math.isfinite(float(norm))]


class DivergenceGuard(Callback):
    """After each backward, before the optimiser step: stop on a non-finite student gradient.

    Lightning calls ``on_before_optimizer_step`` from ``optimizer.step()`` under manual optimisation
    too, so the weights are still those of the last good step. On divergence the guard saves
    ``<dirpath>/postmortem-step<N>.ckpt`` (full trainer state plus a ``divergence`` record),
    leaves ``last.ckpt`` alone and raises :class:`DivergenceError` naming stage, step and images.
    """

    def __init__(self, dirpath: str | os.PathLike, stage: str = "") -> None:
        self.dirpath = Path(dirpath)
        self.stage = stage
        self._names: list[str] = []
        self._record: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._names = batch_names(batch)

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer) -> None:
        student = getattr(module, "student", module)
        bad = non_finite_parameters(student.named_parameters())
        if not bad:
            return
        step = int(trainer.global_step)
        stage = self.stage or getattr(module, "stage_name", type(module).__name__)
        self._record = {"stage": stage, "step": step, "batch": list(self._names), "parameters": bad[:20]}
        path = self.dirpath / f"postmortem-step{step}.ckpt"
        try:
            trainer.save_checkpoint(path)
        finally:
            self._record = None
        message = (
            f"stage={stage} diverged at step {step}: non-finite gradients in {len(bad)} parameter tensors "
            f"(first: {bad[0]}); batch images: {', '.join(self._names) or '?'}. Post-mortem checkpoint: {path}; "
            "the last good checkpoint is last.ckpt — lower the learning rate or check those images, then resume=true"
        )
        log.error("%s", message)
        raise DivergenceError(message)

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict) -> None:
        if self._record is not None:
            checkpoint["divergence"] = dict(self._record)


# ---------------------------------------------------------------------- SIGTERM
class SigtermCheckpoint(Callback):
    """Save the full trainer state to ``path`` (``last.ckpt``) when Lightning stops on SIGTERM.

    Lightning's SIGTERM handler only sets a flag; the loop raises ``SIGTERMException`` at the end of
    the current batch (a finished optimiser step), and ``on_exception`` runs before it propagates. Without
    this, every step since the last periodic checkpoint would be lost. The save has no barrier
    (``trainer.save_checkpoint`` has one): each rank dumps its state and the strategy writes on rank 0
    only, so ranks that stop at different batches cannot deadlock here. Other exceptions are left alone:
    a crash may happen mid-step, when the state is not worth keeping.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        trainer.strategy.save_checkpoint(checkpoint, self.path)
        requeue = next((c for c in trainer.callbacks if isinstance(c, RequeueSignal) and c.received), None)
        log.warning("%s: saved step %d to %s", requeue.name if requeue else "SIGTERM", trainer.global_step, self.path)


# ---------------------------------------------------------------------- requeue signal
def parse_signal(value: Any) -> signal.Signals | None:
    """``SIGUSR2``, ``USR2`` (as in ``$SUBMITIT_PREEMPT_SIGNAL``) or ``12`` → the signal; null or "" → None."""
    if value is None or str(value).strip().lower() in ("", "null", "none"):
        return None
    text = str(value).strip().upper()
    try:
        return signal.Signals(int(text)) if text.isdigit() else signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise UserError(f"requeue_signal={value} is not a signal; use e.g. SIGUSR2, or null to disable") from None


class RequeueSignal(Callback):
    """A scheduler's requeue signal (submitit's pre-timeout SIGUSR2) stops the stage like SIGTERM, then hands over.

    The handler only records the signal. At the end of each training step the ranks agree whether any got it
    (a MAX all-reduce under DDP, so all stop after the same step whichever got it first) and if so set
    Lightning's SIGTERM flag: the loop stops after that step, :class:`SigtermCheckpoint` saves it to
    ``last.ckpt`` on every rank's behalf (written by rank 0) and ``run_stage`` marks the manifest. ``run_stage``
    then calls :meth:`hand_over`, i.e. the handler this one replaced (submitit's: requeue and exit).
    :meth:`install` works from the main thread only; :meth:`restore` puts the previous handler back.
    """

    def __init__(self, signum: signal.Signals) -> None:
        self.signum = signal.Signals(signum)
        self.name = self.signum.name
        self.previous: Any = None
        self.received = False
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.debug("%s handler not installed: not in the main thread", self.name)
            return
        self.received = False
        self.previous = signal.signal(self.signum, self._handle)
        self._installed = True

    def restore(self) -> None:
        if self._installed:
            signal.signal(self.signum, signal.SIG_DFL if self.previous is None else self.previous)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True
        log.warning("%s: stopping after the current training step to save it", self.name)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stop = self.received
        if distributed_world()[0] > 1:  # every rank runs this hook once per step: a safe collective
            flag = torch.tensor([int(stop)], device=trainer.strategy.root_device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            self.received = True
            trainer._signal_connector.received_sigterm = True  # Lightning has no public setter

    def hand_over(self) -> bool:
        """Run the handler this one replaced (it may exit); False where there was none (SIG_DFL/SIG_IGN)."""
        if not callable(self.previous):
            return False
        log.warning("%s: handing over to the previous handler %r", self.name, self.previous)
        self.previous(self.signum, None)
        return True

    def __getstate__(self) -> dict:
        return {**self.__dict__, "previous": None, "_installed": False}  # handlers belong to this process


# ---------------------------------------------------------------------- distributed helpers
def distributed_world() -> tuple[int, int]:
    """(world size, rank) of an initialised process group, else (1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def is_rank_zero() -> bool:
    """Rank 0 of the process group, or — before Lightning starts one — by the launcher's env (RANK…)."""
    world, rank = distributed_world()
    if world > 1:
        return rank == 0
    return int(getattr(rank_zero_only, "rank", 0) or 0) == 0


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
