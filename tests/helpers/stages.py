"""Config composition for stage tests: the real config tree, a tiny model, the small toy data."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from pytorch_lightning.callbacks import Callback

from atp.config import CONF_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "experiment=toy_cpu",
    "dataset.scale=[64,32]",
    "dataset.crop_size=[32,32]",
    # the data_toy_root fixture's size: a toy tree that does not match its config is regenerated
    "dataset.toy.n_source=12",
    "dataset.toy.n_target=8",
    "dataset.toy.n_val=4",
    "dataset.toy.size=[64,32]",
    "data.batch_size=2",
    "data.val_batch_size=4",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "logger=csv",
]


def stage_cfg(stage: str, data_dir: Path, out_dir: Path, run_dir: Path, *overrides: str) -> DictConfig:
    """The composed training config of ``stage`` with test-sized overrides."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*TINY, f"stage={stage}", f"paths.data_dir={data_dir}", f"paths.output_dir={out_dir}",
                       "trainer.max_steps=4", "trainer.val_check_interval=4", *overrides],
        )
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
        cfg.per_stage = {}
    return cfg


def logged_losses(run_dir: Path) -> dict[str, list[float]]:
    """``train/loss/*`` columns of the CSV logger, one value per logged step."""
    rows = list(csv.DictReader((Path(run_dir) / "csv" / "metrics.csv").open()))
    losses: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("train/loss/") and value not in ("", None):
                losses.setdefault(key.removeprefix("train/loss/"), []).append(float(value))
    return losses


def all_finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)


class CrashAtStep(Callback):
    """Raises (a crash: pre-emption, OOM) at the start of the step where ``global_step == step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def train_two_steps(tmp_path: Path, stage: str, *overrides: str, callbacks=(), source_class_share=None):
    """(source model, trained module): ``stage`` built from its config with the tiny model, trained 2 steps on
    random 32² target batches by a bare Trainer; no warm-up, so every step moves the trainable weights (the
    schedule's first steps have lr ≈ 0). ``source_class_share``: the share a source checkpoint would carry."""
    import copy

    import pytorch_lightning as pl
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from atp.stages import build_stage_module

    cfg = stage_cfg(stage, tmp_path, tmp_path, tmp_path / "run", "stage.module.schedule.warmup_steps=0", *overrides)
    model = instantiate(cfg.model)
    source = copy.deepcopy(model)
    module = build_stage_module(cfg.stage, model=model, num_classes=cfg.dataset.num_classes, seed=cfg.seed,
                                source_class_share=source_class_share)
    generator = torch.Generator().manual_seed(0)
    batches = [{"img": 2 + 3 * torch.randn(2, 3, 32, 32, generator=generator), "name": ["a", "b"]}
               for _ in range(2)]
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=list(callbacks))
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return source, module
