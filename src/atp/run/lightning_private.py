"""Every use of Lightning's private API in atp, one named function each (pinned by tests/run/test_lightning_private_api.py).

Lightning 2.6 has no public way to do these things; if an upgrade changes an attribute, the pin test
names the function here that needs a new implementation.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


def validate_in_memory(trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any) -> None:
    """``trainer.validate`` on the weights in memory, loading no checkpoint.

    With ``ckpt_path`` unset on SLURM, Lightning would first load the newest ``hpc_ckpt_*.ckpt`` of
    ``default_root_dir`` (an older step) into the module. Private: ``trainer._checkpoint_connector``'s
    ``_user_managed``/``_ckpt_path`` (what the ``trainer.ckpt_path`` setter sets; the setter rejects None).
    """
    connector = trainer._checkpoint_connector
    connector._user_managed, connector._ckpt_path = True, None
    trainer.validate(module, datamodule=datamodule, verbose=False)


def dump_trainer_state(trainer: pl.Trainer) -> dict[str, Any]:
    """The full checkpoint dict of the running trainer (weights, optimisers, loops, callbacks), without a barrier.

    ``trainer.save_checkpoint`` barriers all ranks, which deadlocks when ranks stop at different batches.
    Private: ``trainer._checkpoint_connector.dump_checkpoint``.
    """
    return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)


def stop_as_on_sigterm(trainer: pl.Trainer) -> None:
    """Make the fit loop stop after the current batch exactly as on SIGTERM (raising ``SIGTERMException``).

    Private: ``trainer._signal_connector.received_sigterm``, the flag Lightning's own SIGTERM handler sets.
    """
    trainer._signal_connector.received_sigterm = True


def periodic_checkpoint_steps(trainer: pl.Trainer) -> list[int]:
    """``every_n_train_steps`` of each checkpoint callback (0 where it does not save on a step count).

    Private: ``ModelCheckpoint._every_n_train_steps`` (the constructor argument has no public attribute).
    """
    return [int(getattr(callback, "_every_n_train_steps", 0) or 0) for callback in trainer.checkpoint_callbacks]
