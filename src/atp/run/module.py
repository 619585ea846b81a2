"""The stage's LightningModule from ``cfg.stage.module`` (and, for distill, its black-box oracle)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from atp.errors import UserError
from atp.models.weights import load_segmentor, read_checkpoint
from atp.stages import BlackBoxSource


def build_oracle(cfg: DictConfig) -> BlackBoxSource:
    """The black-box source for stage=distill: a checkpoint wrapped so only probabilities come out."""
    path = cfg.stage.module.get("oracle")
    if not path:
        raise UserError("stage=distill needs stage.module.oracle=/path/to/source_checkpoint")
    source = instantiate(cfg.model)
    state = read_checkpoint(path, which=cfg.stage.module.get("oracle_which", "student"), trust=cfg.trust_checkpoints)
    load_segmentor(source, state, source=str(path))
    source.eval()

    def predict(images: torch.Tensor) -> torch.Tensor:
        if next(source.parameters()).device != images.device:  # once, on the first batch
            source.to(images.device)
        logits = torch.nn.functional.interpolate(source(images), size=images.shape[-2:], mode="bilinear",
                                                 align_corners=False)
        return logits.softmax(dim=1)

    return BlackBoxSource(predict)


def build_module(cfg: DictConfig, model: torch.nn.Module) -> pl.LightningModule:
    stage = cfg.stage
    extra: dict[str, Any] = {}
    if stage.name == "distill":
        extra["oracle"] = build_oracle(cfg)
    module_cfg = OmegaConf.to_container(stage.module, resolve=True)
    module_cfg.pop("oracle", None)  # build_oracle's options, not the stage's
    module_cfg.pop("oracle_which", None)
    # Plain containers only: they go into the checkpoint's hyper-parameters, which must load with
    # torch.load(weights_only=True) (instantiate(_recursive_=False) would pass DictConfigs).
    module_class = get_class(module_cfg.pop("_target_"))
    return module_class(
        model=model,
        optim=OmegaConf.to_container(stage.optim, resolve=True),
        schedule=OmegaConf.to_container(stage.schedule, resolve=True),
        eval=OmegaConf.to_container(stage.eval, resolve=True),
        num_classes=cfg.dataset.num_classes,
        seed=cfg.seed,
        log_interval=stage.log_interval,
        collapse_share=stage.collapse_share,
        collapse_patience=stage.collapse_patience,
        **module_cfg,
        **extra,
    )
