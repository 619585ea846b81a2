"""The ``conf/callbacks`` group: what a stage gets by default, and dropping/adding one from the command line."""

from __future__ import annotations

import pytest
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from atp.callbacks.divergence import DivergenceGuard
from atp.callbacks.progress_bar import StageProgressBar
from atp.callbacks.signals import RequeueSignal, SigtermCheckpoint
from atp.callbacks.wandb_panels import WandbPanels
from atp.errors import UserError
from atp.run import run_stage
from atp.run.callbacks import configured_callbacks, stage_callbacks
from atp.run.manifest import ManifestCallback
from tests.helpers.stages import stage_cfg


class CountSteps(Callback):
    """Counts training batches and records the callback types the trainer runs."""

    def __init__(self, label: str = "") -> None:
        self.label, self.batches, self.seen, self.labels, self.every = label, 0, [], [], None

    def on_fit_start(self, trainer, module):
        self.seen = [type(c).__name__ for c in trainer.callbacks]
        self.labels = [c.label for c in trainer.callbacks if isinstance(c, CountSteps)]
        self.every = next(c._every_n_train_steps for c in trainer.callbacks if isinstance(c, ModelCheckpoint))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.batches += 1


def test_default_group_in_order_with_runtime_values(data_toy_root, tmp_path):
    run_dir = tmp_path / "run"
    cfg = stage_cfg("source", data_toy_root, tmp_path, run_dir, "trainer.enable_progress_bar=true",
                    "checkpoint_every=3", "requeue_signal=SIGUSR2")
    callbacks = configured_callbacks(cfg)
    assert [type(c) for c in callbacks] == [ModelCheckpoint, SigtermCheckpoint, RequeueSignal, DivergenceGuard,
                                            StageProgressBar, WandbPanels]
    checkpoint, sigterm, requeue, guard, bar, _ = callbacks
    assert checkpoint.dirpath == str(run_dir / "checkpoints") and checkpoint._every_n_train_steps == 3
    assert sigterm.path == run_dir / "checkpoints" / "last.ckpt"
    assert requeue.name == "SIGUSR2"
    assert guard.dirpath == run_dir / "checkpoints" and guard.stage == "source"
    assert bar.label == "source (toy)"


def test_manifest_callback_runs_after_the_sigterm_save(data_toy_root, tmp_path):
    cfg = stage_cfg("source", data_toy_root, tmp_path, tmp_path / "run")
    extra = CountSteps()
    names = [type(c) for c in stage_callbacks(cfg, tmp_path / "run", {}, [extra])]
    assert names.index(SigtermCheckpoint) < names.index(ManifestCallback) == len(names) - 2
    assert names[-1] is CountSteps


def test_progress_bar_left_out_when_the_trainer_disables_it(data_toy_root, tmp_path):
    cfg = stage_cfg("source", data_toy_root, tmp_path, tmp_path / "run")  # the tests' trainer.enable_progress_bar=false
    assert not any(isinstance(c, StageProgressBar) for c in configured_callbacks(cfg))


def test_requeue_signal_null_makes_the_callback_inert(data_toy_root, tmp_path):
    cfg = stage_cfg("source", data_toy_root, tmp_path, tmp_path / "run", "requeue_signal=null")
    (requeue,) = [c for c in configured_callbacks(cfg) if isinstance(c, RequeueSignal)]
    assert requeue.signum is None
    requeue.install()  # installs nothing
    assert requeue.hand_over() is False


def test_a_callback_without_target_is_one_clear_error(data_toy_root, tmp_path):
    cfg = stage_cfg("source", data_toy_root, tmp_path, tmp_path / "run", "+callbacks.mine={every: 3}")
    with pytest.raises(UserError, match=r"callbacks\.mine needs a _target_"):
        configured_callbacks(cfg)


def test_drop_and_add_callbacks_from_the_command_line(data_toy_root, tmp_path):
    run_dir = tmp_path / "run"
    cfg = stage_cfg("source", data_toy_root, tmp_path, run_dir, "callbacks.divergence_guard=null",
                    "callbacks.checkpoint.every_n_train_steps=2",
                    "+callbacks.count._target_=tests.run.test_callbacks_group.CountSteps",
                    "+callbacks.count.label=${stage.name}")
    record = CountSteps()  # the one instantiated from the config is found through the trainer
    manifest = run_stage(cfg, run_dir, extra_callbacks=[record])
    assert manifest["status"] == "complete"
    assert "DivergenceGuard" not in record.seen and "CountSteps" in record.seen
    assert record.labels == ["source", ""]  # the configured one (interpolated), then this probe
    assert record.batches == 4  # trainer.max_steps=4
    assert record.every == 2
