"""Run one stage from a composed config: checks, weights, data, trainer, manifest (DESIGN §3–§4)."""

from __future__ import annotations

import logging
import os
import re
import signal
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from atp import pipeline, wandb_panels
from atp.atomic import clean_stale_temp_files
from atp.data import build_datamodule
from atp.data.splits import EASY_FILE, HARD_FILE, has_split
from atp.errors import StageInterrupted, UserError
from atp.models.weights import load_into, load_segmentor, read_checkpoint, read_global_step
from atp.progress import StageProgressBar
from atp.stages import STAGES, build_stage_module

log = logging.getLogger(__name__)
# Manual optimisation saves the post-step state, which is exactly what a resume needs.
warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
# Validation metrics come from a torchmetrics confusion matrix, which is all-reduced before compute().
warnings.filterwarnings("ignore", message=r".*sync_dist=True.*when logging on epoch level.*")


def ensure_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"output directory {run_dir} is not writable ({err.strerror}); set paths.output_dir=<a writable dir>"
        ) from err


def model_name(cfg: DictConfig) -> str:
    return str(OmegaConf.select(cfg, "model.name", default=None) or OmegaConf.select(cfg, "model.encoder"))


def check_data(cfg: DictConfig) -> None:
    """Fail before any long work when the dataset layout is broken (same report as atp.data.check)."""
    from atp.data.check import DatasetCheckError, check_dataset, raise_on_problems

    try:
        raise_on_problems(check_dataset(cfg.dataset), cfg.dataset.name)
    except DatasetCheckError as err:
        raise UserError(str(err)) from err


def resolve_init(cfg: DictConfig, stage: str, sweep_dir: Path | None, key: str) -> tuple[Path | None, str | None]:
    """Path of the checkpoint to initialise from (weights only) and where it came from."""
    init = cfg.init_from
    if init in (None, "null", "none"):
        return None, None
    if init == "auto":
        manifest = pipeline.resolve_predecessor(
            stage, dataset=cfg.dataset.name, model=model_name(cfg), seed=cfg.seed,
            output_dir=cfg.paths.output_dir, sweep_dir=sweep_dir, key=key,
        )
        return pipeline.manifest_checkpoint(manifest), manifest["_dir"]
    path = Path(str(init)).expanduser()
    if not path.is_file():
        raise UserError(f"init_from={init}: no such file; pass a checkpoint path or init_from=auto")
    return path, None


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


def validate_in_memory(trainer: pl.Trainer, module: pl.LightningModule, datamodule) -> None:
    """``trainer.validate`` on the weights in memory: with ``ckpt_path`` unset on SLURM, Lightning would
    first load the newest ``hpc_ckpt_*.ckpt`` of the run dir (an older step) into the module."""
    connector = trainer._checkpoint_connector  # Lightning <2.7 has no public "load nothing"
    connector._user_managed, connector._ckpt_path = True, None
    trainer.validate(module, datamodule=datamodule, verbose=False)


def load_initial_weights(model: torch.nn.Module, cfg: DictConfig, path: Path | None, stage: str) -> str:
    """Weights-only initialisation; strict on what the checkpoint covers (spec §14 #8)."""
    trust = bool(cfg.trust_checkpoints)
    if path is None:
        imagenet = OmegaConf.select(cfg, "model.imagenet_init")
        if stage in ("source", "distill") and imagenet:
            state = read_checkpoint(imagenet, trust=trust)
            load_into(model, state, strict=True, parts=("encoder",))
            return f"encoder from ImageNet weights {imagenet}"
        return "random initialisation"
    state = read_checkpoint(path, which=cfg.init_which, trust=trust)
    prefixes = {name.split(".", 1)[0] for name in state}
    if prefixes == {"encoder"}:
        if stage not in ("source", "distill"):
            raise UserError(
                f"init_from={path} holds encoder weights only (an ImageNet backbone?); stage={stage} needs a "
                "segmentation model: train one with stage=source, or use model.imagenet_init for stage=source"
            )
        load_into(model, state, strict=True, parts=("encoder",))
        return f"encoder from {path}"
    if getattr(model, "proj_head", None) is not None and "proj_head" not in prefixes:
        log.warning("%s has no projection head weights; the projection head starts from random weights", path)
    parts = load_segmentor(model, state, source=str(path))
    return f"{'+'.join(parts)} from {path}"


class ManifestCallback(Callback):
    """Keeps the manifest's validation history current (written atomically after each validation)."""

    def __init__(self, run_dir: Path, manifest: dict) -> None:
        self.run_dir, self.manifest = run_dir, manifest

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        """A stopped stage says why instead of ``running``: ``interrupted`` (SIGTERM, the requeue signal,
        Ctrl-C) or ``failed`` (any crash, divergence included), with the step it stopped at."""
        interrupted = isinstance(exception, (SIGTERMException, KeyboardInterrupt))
        self.manifest.update(status="interrupted" if interrupted else "failed",
                             stopped_at_step=int(trainer.global_step))
        if not interrupted:
            self.manifest["error"] = f"{type(exception).__name__}: {exception}"[:2000]
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


def build_module(cfg: DictConfig, model: torch.nn.Module) -> pl.LightningModule:
    return build_stage_module(cfg.stage, model=model, num_classes=cfg.dataset.num_classes, seed=cfg.seed)


def build_loggers(cfg: DictConfig, run_dir: Path, sweep_dir: Path | None, resuming: bool = False) -> list:
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        logger_cfg = OmegaConf.to_container(logger_cfg, resolve=True)
        for key in wandb_panels.PANEL_KEYS:  # read by the W&B panels callback, not by the logger
            logger_cfg.pop(key, None)
        if name == "csv" and resuming:  # a resumed run logs beside, not over, what was logged before
            logger_cfg["version"] = f"resumed-{time.strftime('%Y%m%d-%H%M%S')}"
        if name == "wandb":
            logger_cfg["group"] = logger_cfg.get("group") or (
                f"{cfg.dataset.name}-{sweep_dir.name}" if sweep_dir else f"{cfg.dataset.name}-{run_dir.name}"
            )
            logger_cfg.setdefault("name", f"{cfg.stage.name}-{run_dir.name}")
        loggers.append(instantiate(logger_cfg))
    return loggers


def run_stage(
    cfg: DictConfig, run_dir: Path, sweep_dir: Path | None = None, key: str = "", extra_callbacks: list | None = None
) -> dict:
    """Train one stage end to end and return its manifest (written to ``run_dir/manifest.json``)."""
    stage = cfg.stage.name
    if stage not in STAGES:
        raise UserError(f"stage={stage} is not a training stage; choose one of {', '.join(STAGES)} or chain")
    run_dir = Path(run_dir)
    ensure_writable(run_dir)
    from atp import reliability  # [reliability] lazy: atp.reliability imports UserError from here
    if reliability.is_rank_zero():  # [reliability] another rank may be mid-write of a temp file
        clean_stale_temp_files(run_dir)
    if cfg.check_data:
        check_data(cfg)
    init_path, init_run = resolve_init(cfg, stage, sweep_dir, key)

    resume_path = cfg.ckpt_path
    previous = pipeline.read_manifest(run_dir)
    # On SLURM a requeued job re-runs the same command: it resumes an unfinished stage of its run dir
    # (saved by the requeue signal or SIGTERM), and Lightning, which would restore an hpc_ckpt_*.ckpt by
    # itself whenever ckpt_path is unset, is overruled so the newer of it and last.ckpt wins.
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

    pl.seed_everything(cfg.seed, workers=True)
    model = instantiate(cfg.model)
    init_note = load_initial_weights(model, cfg, init_path, stage)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    module = build_module(cfg, model)
    if cfg.compile:
        module.student.compile()
        if hasattr(module, "teacher"):
            module.teacher.compile()

    manifest = pipeline.new_manifest(
        stage=stage, dataset=cfg.dataset.name, model=model_name(cfg), seed=int(cfg.seed), chain_key=key,
        init_from=str(init_path) if init_path else None, init_run=init_run, init_note=init_note,
        config_hash=pipeline.config_hash(OmegaConf.to_container(cfg, resolve=True)),
        run_dir=str(run_dir.resolve()), sweep_dir=str(sweep_dir.resolve()) if sweep_dir else None,
        max_steps=int(cfg.trainer.max_steps), artefacts={},
    )
    if previous and resume_path:
        manifest["history"] = previous.get("history", [])
    split_dir = cfg.split_dir
    if cfg.stage.data_mode == "easy_hard":
        split_dir = ensure_split(cfg, model, run_dir, split_dir)
        manifest["artefacts"]["split_dir"] = os.path.relpath(split_dir, run_dir)
    if reliability.is_rank_zero():  # [reliability] rank 0 writes the run dir's files
        pipeline.write_manifest(run_dir, manifest)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=False)

    datamodule = build_datamodule(
        cfg.dataset, mode=cfg.stage.data_mode, split_dir=split_dir, seed=cfg.seed,
        **OmegaConf.to_container(cfg.data, resolve=True),
    )
    ckpt_dir = run_dir / "checkpoints"
    callbacks = [
        ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=cfg.checkpoint_every),
        reliability.SigtermCheckpoint(ckpt_dir / "last.ckpt"),  # [reliability] saves before the manifest says so
        ManifestCallback(run_dir, manifest),
        reliability.DivergenceGuard(ckpt_dir, stage),  # [reliability]
        *(extra_callbacks or []),
    ]
    requeue_signal = reliability.parse_signal(cfg.get("requeue_signal"))  # [reliability] submitit's SIGUSR2
    requeue = reliability.RequeueSignal(requeue_signal) if requeue_signal else None
    if requeue is not None:
        callbacks.append(requeue)
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(StageProgressBar(stage, cfg.dataset.name, leave=True))
    loggers = build_loggers(cfg, run_dir, sweep_dir, resuming=resume_path is not None)
    panels = wandb_panels.attach(loggers, OmegaConf.select(cfg, "logger.wandb"))
    if panels is not None:
        callbacks.append(panels)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False,
                          default_root_dir=str(run_dir),
                          plugins=[reliability.AtomicCheckpointIO()])  # [reliability] atomic checkpoint files
    log.info("stage=%s dataset=%s: %s; run dir %s", stage, cfg.dataset.name, init_note, run_dir)
    started = time.time()
    if requeue is not None:
        requeue.install()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path)
    except SIGTERMException:  # [reliability] SigtermCheckpoint saved the step, ManifestCallback recorded it
        by = requeue if requeue is not None and requeue.received else None
        if by is not None:
            by.restore()
            by.hand_over()  # submitit's handler requeues the job and exits (on rank 0; other ranks return)
        raise StageInterrupted(
            f"stage={stage} stopped by {by.name if by else 'SIGTERM'} after step {trainer.global_step} of "
            f"{cfg.trainer.max_steps}; {ckpt_dir / 'last.ckpt'} holds that step: continue with resume=true "
            "(same command and run dir)", by.signum if by else signal.SIGTERM,
        ) from None
    finally:
        if requeue is not None:
            requeue.restore()
    final = ckpt_dir / "final.ckpt"
    try:
        history = manifest.get("history") or []
        if not history or history[-1]["step"] != trainer.global_step:
            validate_in_memory(trainer, module, datamodule)
        trainer.save_checkpoint(final, weights_only=True)
    except Exception as err:  # [reliability] outside fit, so ManifestCallback.on_exception does not see it
        manifest.update(status="failed", stopped_at_step=int(trainer.global_step),
                        error=f"{type(err).__name__}: {err}"[:2000])
        if trainer.is_global_zero:
            pipeline.write_manifest(run_dir, manifest)
        raise
    manifest.update(
        status="complete", final_ckpt=os.path.relpath(final, run_dir), last_ckpt=os.path.relpath(ckpt_dir / "last.ckpt", run_dir),
        steps=int(trainer.global_step), finished_at=time.time(), train_seconds=round(time.time() - started, 1),
    )
    if trainer.is_global_zero:  # [reliability]
        pipeline.write_manifest(run_dir, manifest)
        if panels is not None:
            panels.end_stage(run_dir, manifest)
    if requeue is not None and requeue.received:  # [reliability] the signal came after the last step
        requeue.hand_over()
    return manifest


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
    from atp import reliability  # [reliability] DDP: shard, gather, rank 0 writes, barrier
    if reliability.distributed_world()[0] == 1 and not reliability.is_rank_zero():
        return reliability.wait_for_split(path)  # a rank launched before the process group exists
    datamodule = build_datamodule(cfg.dataset, mode="predict", seed=cfg.seed,
                                  **{**OmegaConf.to_container(cfg.data, resolve=True),
                                     "val_batch_size": cfg.stage.rank.batch_size})
    datamodule.setup("predict")
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu"
    return reliability.rank_split(model, datamodule.predict_dataloader(), path,  # [reliability]
                                  easy_ratio=cfg.stage.rank.easy_ratio, device=device)


__all__ = ["run_stage"]
