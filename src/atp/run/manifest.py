"""The stage's ``manifest.json`` while it runs: the always-on callback of the hand-off contract (docs/ARCHITECTURE.md, "run layer")."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from atp.callbacks.signals import received_requeue
from atp.run import pipeline
from atp.run.init_weights import model_name


def start_manifest(cfg: DictConfig, run_dir: Path, sweep_dir: Path | None, key: str, init_path: Path | None,
                   init_run: str | None, init_note: str) -> dict:
    """The manifest of a stage that starts now (status ``running``)."""
    return pipeline.new_manifest(
        stage=cfg.stage.name, dataset=cfg.dataset.name, model=model_name(cfg), seed=int(cfg.seed), chain_key=key,
        init_from=str(init_path) if init_path else None, init_run=init_run, init_note=init_note,
        config_hash=pipeline.config_hash(OmegaConf.to_container(cfg, resolve=True)),
        run_dir=str(run_dir.resolve()), sweep_dir=str(sweep_dir.resolve()) if sweep_dir else None,
        max_steps=int(cfg.trainer.max_steps), artefacts={},
    )


def mark_failed(manifest: dict, step: int, error: BaseException | None = None, stopped_by: str | None = None) -> None:
    """Record where and why a stage stopped: ``interrupted`` by ``stopped_by`` (a signal, Ctrl-C), or
    ``failed`` with the ``error``."""
    manifest["stopped_at_step"] = int(step)
    if error is None:
        manifest.update(status="interrupted", stopped_by=stopped_by)
    else:
        manifest.update(status="failed", error=f"{type(error).__name__}: {error}"[:2000])


def carry_over(previous: dict, resume_path: str | os.PathLike) -> dict:
    """What a resumed stage keeps of its earlier manifest: the validation history and every stop so far
    (``interruptions``: step, status, what stopped it, and the checkpoint the run resumed from)."""
    stops = list(previous.get("interruptions", []))
    if previous.get("status") in ("interrupted", "failed"):
        stops.append({"step": previous.get("stopped_at_step"), "status": previous["status"],
                      "stopped_by": previous.get("stopped_by") or previous.get("error"),
                      "resumed_from": str(resume_path)})
    return {"history": previous.get("history", []), "interruptions": stops}


def mark_complete(manifest: dict, run_dir: Path, final: Path, last: Path, steps: int, started: float) -> None:
    manifest.update(
        status="complete", final_ckpt=os.path.relpath(final, run_dir), last_ckpt=os.path.relpath(last, run_dir),
        steps=int(steps), finished_at=time.time(), train_seconds=round(time.time() - started, 1),
    )


class ManifestCallback(Callback):
    """Keeps the manifest's validation history current (written atomically after each validation).

    Always on (not in ``conf/callbacks``): the next stage's ``init_from=auto`` reads what it writes.
    """

    def __init__(self, run_dir: Path, manifest: dict) -> None:
        self.run_dir, self.manifest = run_dir, manifest

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        """A stopped stage says why instead of ``running``: ``interrupted`` (SIGTERM, the requeue signal,
        Ctrl-C) or ``failed`` (any crash, divergence included), with the step it stopped at."""
        interrupted = isinstance(exception, (SIGTERMException, KeyboardInterrupt))
        requeue = received_requeue(trainer.callbacks)
        stopped_by = requeue.name if requeue else "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl-C"
        mark_failed(self.manifest, trainer.global_step, None if interrupted else exception, stopped_by)
        if trainer.is_global_zero:
            pipeline.write_manifest(self.run_dir, self.manifest)

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        metrics = getattr(module, "last_val_metrics", None)
        if trainer.sanity_checking or not metrics:
            return
        # Every rank keeps the history (the metrics are all-reduced, so it is the same on all ranks):
        # run_stage decides from it whether to validate once more, a collective all ranks must join.
        entry = {"step": trainer.global_step, **{k.removeprefix("val/"): v for k, v in metrics.items()
                                                 if not k.startswith("val/IoU/")}}
        history = self.manifest.setdefault("history", [])
        history[:] = [h for h in history if h["step"] != entry["step"]] + [entry]
        self.manifest["metrics"] = {k.removeprefix("val/"): v for k, v in metrics.items()}
        if trainer.is_global_zero:
            pipeline.write_manifest(self.run_dir, self.manifest)
