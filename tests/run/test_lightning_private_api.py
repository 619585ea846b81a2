"""Pins what atp.run.lightning_private relies on in the installed Lightning; a failure names the function to fix."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import Callback, RichProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset

from atp.run import lightning_private

UPGRADE = "Lightning {version} changed what atp.run.lightning_private.{name} relies on: {what}"


def _broken(name: str, what: str) -> str:
    return UPGRADE.format(version=pl.__version__, name=name, what=what)


class Tiny(pl.LightningModule):
    """One weight; every validation records the value it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.seen: list[float] = []

    def training_step(self, batch, batch_idx):
        return (self.weight * batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.seen.append(float(self.weight))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.ones(8, 1)), batch_size=1)


def _trainer(tmp_path, callbacks=(), max_steps=6) -> pl.Trainer:
    return pl.Trainer(default_root_dir=tmp_path, max_steps=max_steps, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=list(callbacks), limit_val_batches=1, num_sanity_val_steps=0)


class At(Callback):
    """Calls ``action(trainer)`` at the end of training batch ``batch_idx``."""

    def __init__(self, batch_idx: int, action) -> None:
        self.batch_idx, self.action, self.result = batch_idx, action, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.batch_idx:
            self.result = self.action(trainer)


def test_stop_as_on_sigterm_stops_after_the_current_step(tmp_path):
    trainer = _trainer(tmp_path, [At(1, lightning_private.stop_as_on_sigterm)])
    with pytest.raises(SIGTERMException):
        trainer.fit(Tiny(), train_dataloaders=_loader())
    assert trainer.global_step == 2, _broken("stop_as_on_sigterm", f"stopped at step {trainer.global_step}, not 2")


def test_dump_trainer_state_is_the_full_resumable_checkpoint(tmp_path):
    # deep-copied: the dump holds references to the live parameters, which keep training
    dump = At(2, lambda trainer: copy.deepcopy(lightning_private.dump_trainer_state(trainer)))
    module = Tiny()
    _trainer(tmp_path, [dump]).fit(module, train_dataloaders=_loader())
    state = dump.result
    assert state is not None and state["global_step"] == 3, _broken("dump_trainer_state", "wrong global_step")
    assert {"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks"} <= state.keys(), \
        _broken("dump_trainer_state", f"keys {sorted(state)}")
    # three SGD steps of lr 0.1 on d(w·1)/dw = 1: 1 − 0.3
    assert float(state["state_dict"]["weight"]) == pytest.approx(0.7), _broken("dump_trainer_state", "weights")
    assert len(state["optimizer_states"]) == 1, _broken("dump_trainer_state", "optimiser state missing")


def test_validate_in_memory_ignores_a_slurm_hpc_checkpoint(tmp_path, monkeypatch):
    module = Tiny()
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(module, train_dataloaders=_loader())  # weight 1 − 2 × 0.1 = 0.8
    trainer.save_checkpoint(tmp_path / "hpc_ckpt_1.ckpt")
    hpc = torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=False)
    hpc["state_dict"]["weight"] = torch.tensor([5.0])  # an older state Lightning would restore on SLURM
    torch.save(hpc, tmp_path / "hpc_ckpt_1.ckpt")
    monkeypatch.setattr(SLURMEnvironment, "detect", staticmethod(lambda: True))
    datamodule = pl.LightningDataModule.from_datasets(val_dataset=TensorDataset(torch.ones(2, 1)), batch_size=1)

    trainer.validate(module, datamodule=datamodule, verbose=False)  # the public call, for contrast
    assert module.seen[-1] == pytest.approx(5.0), (
        f"Lightning {pl.__version__} no longer restores hpc_ckpt_*.ckpt in trainer.validate on SLURM: "
        "atp.run.lightning_private.validate_in_memory may have become unnecessary")
    with torch.no_grad():
        module.weight.fill_(0.8)
    lightning_private.validate_in_memory(trainer, module, datamodule)
    assert module.seen[-1] == pytest.approx(0.8), _broken("validate_in_memory", "it loaded hpc_ckpt_1.ckpt")


def test_the_progress_bar_hook_atp_overrides_exists():
    assert hasattr(RichProgressBar, "_get_train_description"), (
        f"Lightning {pl.__version__} renamed RichProgressBar._get_train_description, which "
        "atp.callbacks.progress_bar.StageProgressBar overrides to name the stage")


def test_periodic_checkpoint_steps_reads_every_n_train_steps(tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                         callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3)])
    steps = lightning_private.periodic_checkpoint_steps(trainer)
    assert steps == [3], _broken("periodic_checkpoint_steps", f"read {steps} from every_n_train_steps=3")
