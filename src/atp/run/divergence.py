"""The divergence guard: stop a stage at the first non-finite gradient, with a post-mortem checkpoint."""

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

log = logging.getLogger(__name__)

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
