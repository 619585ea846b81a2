"""Stopping on a signal without losing steps: SIGTERM saves ``last.ckpt``; a scheduler's requeue signal does the
same and then hands over to the handler it replaced (submitit's requeue)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from atp.errors import UserError
from atp.run.distributed import distributed_world
from atp.run.lightning_private import dump_trainer_state, stop_as_on_sigterm

log = logging.getLogger(__name__)

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
        checkpoint = dump_trainer_state(trainer)
        trainer.strategy.save_checkpoint(checkpoint, self.path)
        requeue = received_requeue(trainer.callbacks)
        log.warning("%s: saved step %d to %s", requeue.name if requeue else "SIGTERM", trainer.global_step, self.path)


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

    The handler only records the signal. At the end of a training step the ranks agree whether any got it
    (a MAX all-reduce under DDP, so all stop after the same step whichever got it first) and if so set
    Lightning's SIGTERM flag: the loop stops after that step, :class:`SigtermCheckpoint` saves it to
    ``last.ckpt`` on every rank's behalf (written by rank 0) and ``run_stage`` marks the manifest. ``run_stage``
    then calls :meth:`hand_over`, i.e. the handler this one replaced (submitit's: requeue and exit).
    :meth:`install` works from the main thread only; :meth:`restore` puts the previous handler back.
    ``signum`` is anything :func:`parse_signal` reads (``conf/train.yaml``'s ``requeue_signal``); null makes the
    callback inert (the signal goes straight to whatever handler is there).

    Alone, a process checks its own flag after every step (free). Under DDP the agreement reads a device
    tensor back (a host sync that stalls a GPU's queue), so it runs only after every ``check_every``-th step:
    the stage then stops up to ``check_every − 1`` steps after the signal, time taken from the grace period
    before the scheduler's kill (those steps are saved, not lost).
    """

    def __init__(self, signum: signal.Signals | str | int | None, check_every: int = 1) -> None:
        if int(check_every) < 1:
            raise UserError(f"callbacks.requeue_signal.check_every={check_every} must be >= 1 (1 = every step)")
        self.check_every = int(check_every)
        self.signum = signum if isinstance(signum, signal.Signals) else parse_signal(signum)
        self.name = self.signum.name if self.signum else "requeue signal (off)"
        self.previous: Any = None
        self.received = False
        self._installed = False

    def install(self) -> None:
        if self.signum is None:
            return
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
        if self.signum is None:  # off on every rank (one config): no collective either
            return
        stop = self.received
        if distributed_world()[0] > 1:  # every rank runs this hook once per step: a safe collective
            if trainer.global_step % self.check_every:  # the same steps on every rank
                return
            flag = torch.tensor([int(stop)], device=trainer.strategy.root_device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            self.received = True
            stop_as_on_sigterm(trainer)

    def hand_over(self) -> bool:
        """Run the handler this one replaced (it may exit); False where there was none (SIG_DFL/SIG_IGN)."""
        if not callable(self.previous):
            return False
        log.warning("%s: handing over to the previous handler %r", self.name, self.previous)
        self.previous(self.signum, None)
        return True

    def __getstate__(self) -> dict:
        return {**self.__dict__, "previous": None, "_installed": False}  # handlers belong to this process


def received_requeue(callbacks: Iterable[Callback]) -> RequeueSignal | None:
    """The requeue-signal callback that received its signal (what stopped the stage), if any."""
    return next((c for c in callbacks if isinstance(c, RequeueSignal) and c.received), None)
