"""A stage killed mid-run and resumed ends with the same weights as an uninterrupted run."""

import pytest
import torch
from omegaconf import open_dict
from pytorch_lightning.callbacks import Callback

from atp.run import run_stage
from tests.stage_helpers import stage_cfg


class CrashAfterStep(Callback):
    """Simulates a crash (pre-emption, OOM) once ``step`` optimiser steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            raise RuntimeError("simulated crash")


def _weights(run_dir):
    state = torch.load(run_dir / "checkpoints" / "final.ckpt", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()}


#: per stage: what makes its 6 steps exercise its loss (selftrain: a 2-step source is never 0.968-confident)
STAGE_OVERRIDES = {"propagate": ["stage.module.scl.start_step=2"], "selftrain": ["stage.module.pos_threshold=0.0"]}


@pytest.mark.parametrize("stage", ["source", "align", "teach", "propagate", "tent", "shot", "selftrain"])
def test_resume_after_crash_equals_uninterrupted(stage, data_toy_root, tmp_path):
    out = tmp_path / "outputs"
    common = ["trainer.max_steps=6", "trainer.val_check_interval=3", "checkpoint_every=3",
              *STAGE_OVERRIDES.get(stage, ["seed=76"])]
    if stage != "source":  # adaptation stages start from a (2-step) source model; source from random weights
        run_stage(stage_cfg("source", data_toy_root, out, out / "src", "trainer.max_steps=2"), out / "src")
        common.append(f"init_from={out / 'src' / 'checkpoints' / 'final.ckpt'}")

    full_dir = out / "full"
    run_stage(stage_cfg(stage, data_toy_root, out, full_dir, *common), full_dir)

    crash_dir = out / "crashed"
    cfg = stage_cfg(stage, data_toy_root, out, crash_dir, *common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_stage(cfg, crash_dir, extra_callbacks=[CrashAfterStep(5)])
    assert (crash_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (crash_dir / "checkpoints" / "final.ckpt").exists()

    with open_dict(cfg):
        cfg.resume = True
    manifest = run_stage(cfg, crash_dir)
    assert manifest["status"] == "complete" and manifest["steps"] == 6

    full, resumed = _weights(full_dir), _weights(crash_dir)
    assert full.keys() == resumed.keys()
    differing = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert not differing, differing[:5]
