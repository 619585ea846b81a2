"""One stage end to end from a composed config (docs/ARCHITECTURE.md, "run layer"): :func:`run_stage` and its steps."""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from atp.atomic import clean_stale_temp_files
from atp.callbacks.signals import RequeueSignal
from atp.data import build_datamodule
from atp.data.check import DatasetCheckError, check_dataset, raise_on_problems
from atp.errors import StageInterrupted, UserError
from atp.models.weights import read_source_class_share
from atp.run import pipeline
from atp.run.callbacks import requeue_callback, stage_callbacks
from atp.run.checkpoint_io import AtomicCheckpointIO
from atp.run.distributed import on_main_process
from atp.run.init_weights import load_initial_weights, resolve_init
from atp.run.lightning_private import validate_in_memory
from atp.run.loggers import build_loggers
from atp.run.manifest import carry_over, mark_complete, mark_failed, start_manifest
from atp.run.resume import choose_resume_path
from atp.run.split import ensure_split
from atp.stages import build_stage_module, check_stage_options
from atp.stages.base import SegStage

log = logging.getLogger(__name__)
EASY_HARD = "easy_hard"  # the data mode (atp.data.datamodule.MODES) that trains on the ranked easy/hard split
# Manual optimisation saves the post-step state, which is exactly what a resume needs.
warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
# Validation metrics come from a torchmetrics confusion matrix, which is all-reduced before compute().
warnings.filterwarnings("ignore", message=r".*sync_dist=True.*when logging on epoch level.*")


def run_stage(
    cfg: DictConfig, run_dir: Path, sweep_dir: Path | None = None, key: str = "",
    extra_callbacks: list[Callback] | None = None,
) -> dict:
    """Train one stage end to end and return its manifest (written to ``run_dir/manifest.json``)."""
    run_dir = Path(run_dir)
    stage, cfg = check_stage_config(cfg, run_dir)
    prepare_run_dir(run_dir)
    if cfg.check_data:
        check_data(cfg)
    init_path, init_run = resolve_init(cfg, stage, sweep_dir, key)
    previous = pipeline.read_manifest(run_dir)
    resume_path = choose_resume_path(cfg, run_dir, previous)

    pl.seed_everything(cfg.seed, workers=True)
    model = instantiate(cfg.model)
    init_note = load_initial_weights(model, cfg, init_path, stage)
    inherited = None if init_path is None else read_source_class_share(init_path, trust=bool(cfg.trust_checkpoints))
    module = build_training_module(cfg, model, inherited)

    manifest = start_manifest(cfg, run_dir, sweep_dir, key, init_path, init_run, init_note)
    if previous and resume_path:
        manifest.update(carry_over(previous, resume_path))
    split_dir = cfg.split_dir
    if stage.data_mode == EASY_HARD:
        split_dir = ensure_split(cfg, model, run_dir, split_dir)
        manifest["artefacts"]["split_dir"] = os.path.relpath(split_dir, run_dir)
    on_main_process(write_run_files, run_dir, manifest, cfg)

    datamodule = build_datamodule(cfg.dataset, mode=stage.data_mode, split_dir=split_dir, seed=cfg.seed,
                                  **OmegaConf.to_container(cfg.data, resolve=True))
    callbacks = stage_callbacks(cfg, run_dir, manifest, extra_callbacks or [])
    loggers = build_loggers(cfg, run_dir, sweep_dir, resuming=resume_path is not None)
    trainer = instantiate(OmegaConf.to_container(cfg.trainer, resolve=True), callbacks=callbacks,
                          logger=loggers or False, default_root_dir=str(run_dir), plugins=[AtomicCheckpointIO()])
    log.info("stage=%s dataset=%s: %s; run dir %s", cfg.stage.name, cfg.dataset.name, init_note, run_dir)
    started = time.time()
    fit(trainer, module, datamodule, resume_path, requeue_callback(callbacks), cfg)
    finish(trainer, module, datamodule, run_dir, manifest, started)
    return manifest


def check_stage_config(cfg: DictConfig, run_dir: Path) -> tuple[type[SegStage], DictConfig]:
    """The stage's registry class, its ``stage.module`` options checked (a ``UserError`` names a wrong one),
    and ``cfg`` with ``run_dir`` (read by ``conf/callbacks``) set to ``run_dir`` (a copy where it differs)."""
    stage = check_stage_options(cfg.stage)
    if OmegaConf.select(cfg, "run_dir", throw_on_resolution_failure=False) != str(run_dir):
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.run_dir = str(run_dir)
    return stage, cfg


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run dir (one clear error if it cannot be written) and, on rank 0, clean stale temp files."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"output directory {run_dir} is not writable ({err.strerror}); set paths.output_dir=<a writable dir>"
        ) from err
    on_main_process(clean_stale_temp_files, run_dir)  # another rank may be mid-write of a temp file


def check_data(cfg: DictConfig) -> None:
    """Fail before any long work when the dataset layout is broken (same report as atp.data.check)."""
    try:
        raise_on_problems(check_dataset(cfg.dataset), cfg.dataset.name)
    except DatasetCheckError as err:
        raise UserError(str(err)) from err


def build_training_module(cfg: DictConfig, model: torch.nn.Module,
                          source_class_share: list[float] | None = None) -> pl.LightningModule:
    """The stage module around ``model`` (``source_class_share``: what the init checkpoint carries), with
    ``channels_last`` and ``compile`` applied."""
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    module = build_stage_module(cfg.stage, model=model, num_classes=cfg.dataset.num_classes, seed=cfg.seed,
                                source_class_share=source_class_share)
    if cfg.compile:
        module.student.compile()
        if hasattr(module, "teacher"):
            module.teacher.compile()
    return module


def write_run_files(run_dir: Path, manifest: dict, cfg: DictConfig) -> None:
    pipeline.write_manifest(run_dir, manifest)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=False)


def fit(trainer: pl.Trainer, module: pl.LightningModule, datamodule, resume_path: str | None,
        requeue: RequeueSignal | None, cfg: DictConfig) -> None:
    """``trainer.fit`` with the requeue handler installed; a signal stop becomes :class:`StageInterrupted`."""
    if requeue is not None:
        requeue.install()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path)
    except SIGTERMException:  # SigtermCheckpoint saved the step, ManifestCallback recorded it
        by = requeue if requeue is not None and requeue.received else None
        if by is not None:
            by.restore()
            by.hand_over()  # submitit's handler requeues the job and exits (on rank 0; other ranks return)
        raise StageInterrupted(
            f"stage={cfg.stage.name} stopped by {by.name if by else 'SIGTERM'} after step {trainer.global_step} of "
            f"{cfg.trainer.max_steps}; {Path(cfg.run_dir) / 'checkpoints' / 'last.ckpt'} holds that step: continue "
            "with resume=true (same command and run dir)", by.signum if by else signal.SIGTERM,
        ) from None
    finally:
        if requeue is not None:
            requeue.restore()


def finish(trainer: pl.Trainer, module: pl.LightningModule, datamodule, run_dir: Path, manifest: dict,
           started: float) -> None:
    """Validate the final weights if the last step was not validated, save ``final.ckpt``, mark the manifest."""
    ckpt_dir = run_dir / "checkpoints"
    final = ckpt_dir / "final.ckpt"
    try:
        history = manifest.get("history") or []
        if not history or history[-1]["step"] != trainer.global_step:
            validate_in_memory(trainer, module, datamodule)
        trainer.save_checkpoint(final, weights_only=True)
    except Exception as err:  # outside fit, so ManifestCallback.on_exception does not see it
        mark_failed(manifest, trainer.global_step, err)
        if trainer.is_global_zero:
            pipeline.write_manifest(run_dir, manifest)
        raise
    share = getattr(module, "source_class_share", None)
    if share is not None and float(share.sum()) > 0:  # the prior the next stages read (issue #23)
        manifest["source_class_share"] = [round(float(v), 6) for v in share.tolist()]
    mark_complete(manifest, run_dir, final, ckpt_dir / "last.ckpt", trainer.global_step, started)
    if trainer.is_global_zero:
        pipeline.write_manifest(run_dir, manifest)
        for callback in trainer.callbacks:  # e.g. WandbPanels: the model artifact, closing the W&B run
            if hasattr(callback, "on_stage_complete"):
                callback.on_stage_complete(run_dir, manifest)
    requeue = requeue_callback(trainer.callbacks)
    if requeue is not None and requeue.received:  # the signal came after the last step
        requeue.hand_over()
