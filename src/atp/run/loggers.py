"""Experiment loggers (``conf/logger``): built per stage; W&B never hangs without network or account."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def wandb_mode(requested: str = "auto") -> str:
    """``online`` only when asked or when an API key is configured; otherwise ``offline``."""
    if requested in ("online", "offline", "disabled"):
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").is_file() and "api.wandb.ai" in (
        Path.home() / ".netrc"
    ).read_text(errors="ignore")
    return "online" if has_key else "offline"


def make_wandb_logger(
    project: str = "atp",
    entity: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    save_dir: str = ".",
    mode: str = "auto",
    name: str | None = None,
    **unused,
):
    """A Lightning ``WandbLogger``; offline (files under ``save_dir/wandb``, syncable later) by default."""
    from pytorch_lightning.loggers import WandbLogger

    for variable in ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY"):
        if os.environ.get(variable) == "":  # an empty variable is invalid for wandb; treat it as unset
            del os.environ[variable]
    resolved = wandb_mode(mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    if resolved == "offline":
        log.info("W&B offline: runs are written under %s/wandb (upload later with `wandb sync`)", save_dir)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    settings = None
    try:
        import wandb

        settings = wandb.Settings(init_timeout=60, silent=True)
    except Exception:  # pragma: no cover - wandb missing is a packaging error reported by the import below
        pass
    return WandbLogger(
        project=project, entity=entity, group=group, tags=list(tags), save_dir=save_dir, mode=resolved,
        name=name, settings=settings,
    )


def build_loggers(cfg: DictConfig, run_dir: Path, sweep_dir: Path | None, resuming: bool = False) -> list:
    """The Lightning loggers of ``cfg.logger`` for one stage run (empty for ``logger=none``)."""
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        logger_cfg = OmegaConf.to_container(logger_cfg, resolve=True)
        if name == "csv" and resuming:  # a resumed run logs beside, not over, what was logged before
            logger_cfg["version"] = f"resumed-{time.strftime('%Y%m%d-%H%M%S')}"
        if name == "wandb":
            logger_cfg["group"] = logger_cfg.get("group") or (
                f"{cfg.dataset.name}-{sweep_dir.name}" if sweep_dir else f"{cfg.dataset.name}-{run_dir.name}"
            )
            logger_cfg.setdefault("name", f"{cfg.stage.name}-{run_dir.name}")
        loggers.append(instantiate(logger_cfg))
    return loggers
