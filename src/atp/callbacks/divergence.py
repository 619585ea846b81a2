"""The divergence guard: stop a stage at the first non-finite gradient, with a post-mortem checkpoint.

Two ways to watch, chosen per optimiser (:func:`skips_on_device`):

* **deferred** (fused AdamW, the default on CUDA): every step folds "some gradient is non-finite" into a
  device-side flag without reading it; the flag goes to the optimiser as ``found_inf`` (as mixed-precision
  gradient scaling does), so the fused kernel leaves weights and optimiser state untouched on device from
  the first bad step on. The host reads the flag only on *check steps* — logging steps, the step before a
  checkpoint, a validation or the end — and before any checkpoint is written.
* **immediate** (any other optimiser, e.g. the CPU's for-loop AdamW, where a read costs nothing): the flag
  is read before every optimiser step.

Either way no non-finite weight reaches a checkpoint, ``last.ckpt`` keeps the last good state and the
error and the post-mortem name the first bad step and its images.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from atp.errors import DivergenceError
from atp.run.lightning_private import dump_trainer_state, periodic_checkpoint_steps

log = logging.getLogger(__name__)

#: steps without a check after which the deferred guard checks anyway (bounds the names it keeps)
MAX_UNCHECKED_STEPS = 1000


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


def gradient_finite(params: list[torch.nn.Parameter], zero: torch.Tensor) -> torch.Tensor:
    """Bool (P,) on the device: whether each parameter's gradient is finite (True without a gradient)."""
    with_grad = [p.grad for p in params if p.grad is not None]
    norms = iter(torch._foreach_norm(with_grad)) if with_grad else iter(())
    return torch.stack([next(norms).float() if p.grad is not None else zero for p in params]).isfinite()


def non_finite_parameters(named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> list[str]:
    """Names of parameters whose gradient has a NaN/Inf (one host sync when all are finite)."""
    named = [(name, p.grad) for name, p in named_params if p.grad is not None]
    if not named:
        return []
    norms = torch._foreach_norm([grad for _, grad in named])
    if bool(torch.stack([n.float() for n in norms]).isfinite().all()):
        return []
    return [name for (name, _), norm in zip(named, norms, strict=True) if not math.isfinite(float(norm))]


def skips_on_device(optimizer: torch.optim.Optimizer, trainer: pl.Trainer) -> bool:
    """Whether ``optimizer`` skips its update on device given a ``found_inf`` flag (fused Adam/AdamW) and no
    gradient scaler owns that flag (16-bit mixed precision)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # LightningOptimizer → the torch optimiser
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and \
        getattr(trainer.precision_plugin, "scaler", None) is None


class DivergenceGuard(Callback):
    """After each backward, before the optimiser step: stop on a non-finite student gradient.

    Lightning calls ``on_before_optimizer_step`` from ``optimizer.step()`` under manual optimisation
    too, so the weights are still those of the last good step (deferred: those before the first bad step,
    every later update having been skipped on device). On divergence the guard saves
    ``<dirpath>/postmortem-step<N>.ckpt`` (full trainer state plus a ``divergence`` record), leaves
    ``last.ckpt`` alone and raises :class:`DivergenceError` naming stage, step and images.
    """

    def __init__(self, dirpath: str | os.PathLike, stage: str = "") -> None:
        self.dirpath = Path(dirpath)
        self.stage = stage
        self._names: list[str] = []
        self._record: dict[str, Any] | None = None
        self._reset_deferred()

    def _reset_deferred(self) -> None:
        # since the last check: (global_step, images) of every step; device flag, first bad offset, bad mask
        self._unchecked: list[tuple[int, list[str]]] = []
        self._flag: torch.Tensor | None = None
        self._first_bad: torch.Tensor | None = None
        self._bad_mask: torch.Tensor | None = None
        self._zero: torch.Tensor | None = None  # the norm of a parameter without a gradient

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._reset_deferred()

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._names = batch_names(batch)
        self._unchecked.append((int(trainer.global_step), self._names))

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer) -> None:
        student = getattr(module, "student", module)
        if not skips_on_device(optimizer, trainer):
            bad = non_finite_parameters(student.named_parameters())
            self._unchecked.clear()
            if bad:
                self._diverged(trainer, module, int(trainer.global_step), self._names, bad)
            return
        self._accumulate(list(student.parameters()))
        getattr(optimizer, "optimizer", optimizer).found_inf = self._flag
        if self._is_check_step(trainer, module):
            self.check(trainer, module)

    def _accumulate(self, params: list[torch.nn.Parameter]) -> None:
        """Fold this step's gradients into the device flag (no host read)."""
        device = params[0].device
        if self._flag is None:
            self._flag = torch.zeros((), dtype=torch.float32, device=device)
            self._first_bad = torch.full((), -1, dtype=torch.long, device=device)
            self._bad_mask = torch.zeros(len(params), dtype=torch.bool, device=device)
            self._zero = torch.zeros((), dtype=torch.float32, device=device)
        finite = gradient_finite(params, self._zero)
        bad_now = ~finite.all()
        first_time = bad_now & (self._flag == 0)
        self._first_bad = torch.where(first_time, len(self._unchecked) - 1, self._first_bad)
        self._bad_mask = torch.where(first_time, ~finite, self._bad_mask)
        self._flag = torch.where(bad_now, 1.0, self._flag)

    def _is_check_step(self, trainer: pl.Trainer, module: pl.LightningModule) -> bool:
        """Whether the host reads the flag in this step: it logs, or a checkpoint, a validation or the end
        follows it (or a stop was requested, or too many steps went unchecked)."""
        after = int(trainer.global_step) + 1
        should_log = getattr(module, "should_log", None)
        saves = any(every and after % every == 0 for every in periodic_checkpoint_steps(trainer))
        validates = trainer.enable_validation and isinstance(trainer.val_check_batch, int) and \
            trainer.val_check_batch > 0 and after % trainer.val_check_batch == 0
        return bool((should_log is not None and should_log()) or saves or validates
                    or (trainer.max_steps > 0 and after >= trainer.max_steps) or trainer.received_sigterm
                    or len(self._unchecked) >= MAX_UNCHECKED_STEPS)

    def _read_flag(self, module: pl.LightningModule) -> tuple[int, list[str], list[str]] | None:
        """(first bad step, its images, bad parameters) if the deferred flag is set, else None (one host sync)."""
        if self._flag is None:
            return None
        state = torch.cat((self._flag.view(1), self._first_bad.view(1).float(), self._bad_mask.float())).tolist()
        if state[0] == 0:
            return None
        step, names = self._unchecked[int(state[1])]
        student = getattr(module, "student", module)
        bad = [name for (name, _), is_bad in zip(student.named_parameters(), state[2:], strict=True) if is_bad]
        return step, names, bad

    def check(self, trainer: pl.Trainer, module: pl.LightningModule, barrier: bool = True) -> None:
        """Read the deferred flag; raise :class:`DivergenceError` (after the post-mortem) if a step went bad."""
        found = self._read_flag(module)
        if found is None:
            self._unchecked.clear()
            return
        self._diverged(trainer, module, *found, detected_at=int(trainer.global_step), barrier=barrier)

    def _diverged(self, trainer: pl.Trainer, module: pl.LightningModule, step: int, names: list[str],
                  bad: list[str], detected_at: int | None = None, barrier: bool = True) -> None:
        stage = self.stage or getattr(module, "stage_name", type(module).__name__)
        self._record = {"stage": stage, "step": step, "batch": list(names), "parameters": bad[:20]}
        if detected_at is not None and detected_at != step:
            self._record["detected_at_step"] = detected_at
        path = self.dirpath / f"postmortem-step{step}.ckpt"
        try:
            if barrier:
                trainer.save_checkpoint(path)
            else:  # from inside another save (e.g. SIGTERM's, where ranks may stop at different batches)
                trainer.strategy.save_checkpoint(dump_trainer_state(trainer), path)
        finally:
            self._record = None
        first = f"first: {bad[0]}" if bad else "parameters unknown"
        found = "" if detected_at in (None, step) else \
            f" (found at step {detected_at}; the updates since were skipped on device)"
        message = (
            f"stage={stage} diverged at step {step}{found}: non-finite gradients in {len(bad)} parameter tensors "
            f"({first}); batch images: {', '.join(names) or '?'}. Post-mortem checkpoint: {path}; "
            "the last good checkpoint is last.ckpt — lower the learning rate or check those images, then resume=true"
        )
        log.error("%s", message)
        raise DivergenceError(message)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        for optimizer in trainer.optimizers:  # the flag is handed over again before the next step
            if getattr(optimizer, "found_inf", None) is self._flag and self._flag is not None:
                del optimizer.found_inf

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict) -> None:
        if self._record is not None:
            checkpoint["divergence"] = dict(self._record)
        elif self._unchecked and self._flag is not None:
            # a save between check steps (SIGTERM, requeue): no barrier, ranks may be at different batches
            self.check(trainer, module, barrier=False)
