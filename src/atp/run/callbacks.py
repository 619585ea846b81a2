"""The stage's callbacks: the ``conf/callbacks`` group, instantiated, plus the always-on manifest callback."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ProgressBar

from atp.callbacks.signals import RequeueSignal
from atp.errors import UserError
from atp.run.manifest import ManifestCallback


def configured_callbacks(cfg: DictConfig) -> list[Callback]:
    """``cfg.callbacks``, each entry instantiated, in config order; null entries are dropped.

    A progress bar is left out under ``trainer.enable_progress_bar=false`` (Lightning refuses both).
    """
    callbacks = []
    for name, entry in (OmegaConf.select(cfg, "callbacks") or {}).items():
        if entry is None:
            continue
        if not OmegaConf.is_dict(entry) or "_target_" not in entry:
            raise UserError(f"callbacks.{name} needs a _target_ (a Callback class), or null to drop it")
        callback = instantiate(entry)
        if not isinstance(callback, Callback):
            raise UserError(f"callbacks.{name}: {entry._target_} is not a Lightning Callback")
        if isinstance(callback, ProgressBar) and not cfg.trainer.get("enable_progress_bar", True):
            continue
        callbacks.append(callback)
    return callbacks


def stage_callbacks(cfg: DictConfig, run_dir: Path, manifest: dict, extra: Iterable[Callback] = ()) -> list[Callback]:
    """The configured callbacks, then :class:`ManifestCallback`, then ``extra`` (tests' probes).

    Order matters on an exception: Lightning runs ``on_exception`` in list order, so SigtermCheckpoint
    (configured) saves ``last.ckpt`` before ManifestCallback marks the manifest ``interrupted`` — a
    manifest never says "interrupted at step N" before step N is on disk. (Lightning moves
    ModelCheckpoint to the end of the list itself.)
    """
    return [*configured_callbacks(cfg), ManifestCallback(run_dir, manifest), *extra]


def requeue_callback(callbacks: Iterable[Callback]) -> RequeueSignal | None:
    """The active requeue-signal callback, if one is configured and not switched off."""
    return next((c for c in callbacks if isinstance(c, RequeueSignal) and c.signum is not None), None)
