"""The divergence guard with a fused optimiser (the GPU default): the flag stays on the device between checks.

A NaN batch at step 3 sets the device flag; the fused AdamW skips that update and every later one on device
(``found_inf``); the host reads the flag at the next check step (step 5, before the step-6 checkpoint) and
stops with a post-mortem that names step 3 and its images. The weights and optimiser state in the
post-mortem are exactly those of ``last.ckpt`` (step 3): nothing after the bad batch touched them.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from atp.errors import DivergenceError
from atp.run import run_stage
from tests.helpers.stages import stage_cfg

pytestmark = pytest.mark.usefixtures("single_thread")

FUSED = ["stage.module.optim.fused=true", "callbacks.progress_bar=null", "trainer.log_every_n_steps=10"]


class PoisonBatch(Callback):
    """Turns the images of the batch at ``step`` into NaN and remembers their names."""

    def __init__(self, step: int) -> None:
        self.step, self.names = step, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            batch["img"].fill_(float("nan"))
            self.names = list(batch["name"])


def _parameters(checkpoint: dict, module_names: list[str]) -> dict[str, torch.Tensor]:
    return {k: checkpoint["state_dict"][k] for k in module_names}


def test_deferred_guard_names_the_bad_step_and_keeps_weights_from_before_it(data_toy_root, tmp_path):
    run_dir = tmp_path / "run"
    cfg = stage_cfg("source", data_toy_root, tmp_path, run_dir, *FUSED, "trainer.max_steps=8",
                    "trainer.val_check_interval=8", "checkpoint_every=3")
    poison = PoisonBatch(3)
    with pytest.raises(DivergenceError) as caught:
        run_stage(cfg, run_dir, extra_callbacks=[poison])
    message = str(caught.value)
    assert "stage=source diverged at step 3 (found at step 5" in message
    assert poison.names and all(name in message for name in poison.names)
    ckpts = run_dir / "checkpoints"
    postmortem = torch.load(ckpts / "postmortem-step3.ckpt", weights_only=False)
    last = torch.load(ckpts / "last.ckpt", weights_only=False)
    assert postmortem["divergence"]["step"] == 3 and postmortem["divergence"]["batch"] == poison.names
    assert postmortem["divergence"]["detected_at_step"] == 5 and postmortem["divergence"]["parameters"]
    assert last["global_step"] == 3 and postmortem["global_step"] == 5
    params = [k for k in last["state_dict"] if "running_" not in k and "num_batches" not in k]
    for name in params:  # bit for bit: the two skipped updates changed nothing
        assert torch.equal(postmortem["state_dict"][name], last["state_dict"][name]), name
    before, after = last["optimizer_states"][0]["state"], postmortem["optimizer_states"][0]["state"]
    assert before.keys() == after.keys()
    for index in before:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(before[index][key], after[index][key]), (index, key)
    assert not (ckpts / "final.ckpt").exists()


def test_deferred_guard_changes_nothing_while_gradients_are_finite(data_toy_root, tmp_path):
    """The flag handed to the fused step as ``found_inf`` is zero: the weights equal those of a run without guard."""
    finals = {}
    for guard in ("on", "off"):
        run_dir = tmp_path / guard
        extra = [] if guard == "on" else ["callbacks.divergence_guard=null"]
        cfg = stage_cfg("teach", data_toy_root, tmp_path, run_dir, *FUSED, "init_from=null", *extra)
        assert run_stage(cfg, run_dir)["status"] == "complete"
        finals[guard] = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert finals["on"].keys() == finals["off"].keys()
    changed = [k for k in finals["on"] if not torch.equal(finals["on"][k], finals["off"][k])]
    assert not changed, changed[:5]


class StopAsOnSigterm(Callback):
    """A SIGTERM (or requeue signal) arriving during ``step``: the stage stops and saves after it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step + 1:
            from atp.run.lightning_private import stop_as_on_sigterm

            stop_as_on_sigterm(trainer)


def test_a_sigterm_save_between_checks_never_writes_diverged_weights(data_toy_root, tmp_path):
    """The bad step 3 is not a check step; SIGTERM at step 4 saves between checks: the guard reads its flag
    before that save, writes the post-mortem instead and leaves last.ckpt (step 3) alone."""
    run_dir = tmp_path / "run"
    cfg = stage_cfg("source", data_toy_root, tmp_path, run_dir, *FUSED, "trainer.max_steps=8",
                    "trainer.val_check_interval=8", "checkpoint_every=3")
    poison = PoisonBatch(3)
    with pytest.raises(DivergenceError, match="diverged at step 3 .found at step 5"):
        run_stage(cfg, run_dir, extra_callbacks=[poison, StopAsOnSigterm(4)])
    ckpts = run_dir / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 3
    postmortem = torch.load(ckpts / "postmortem-step3.ckpt", weights_only=False)
    assert postmortem["divergence"]["batch"] == poison.names
