"""A training step queues GPU work without waiting for it: no host synchronisation on non-logging steps.

Each stage trains six steps on the toy data with the tiny model and the optimiser configuration a GPU gets
(fused AdamW, ``optim.fused=null`` on CUDA); :class:`tests.helpers.sync_probe.CountSyncs` counts every call that
would read device memory on a GPU. Steps 2 and 5 log (``log_every_n_steps=3``) and step 5 also ends with
a checkpoint and validation: there the divergence guard reads its flag and ``log_dict`` reads the losses,
as intended. Every other step must count zero.
"""

from __future__ import annotations

import pytest

from atp.run import run_stage
from tests.helpers.stages import stage_cfg
from tests.helpers.sync_probe import CountSyncs

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 6
GPU_LIKE = [f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={STEPS}", "trainer.log_every_n_steps=3",
            "stage.module.optim.fused=true", "init_from=null", "callbacks.progress_bar=null"]
STAGES = {
    "source": [],
    "align": [],  # the toy images (64×32) exceed the crop (32²): the class-balanced crop runs too
    "teach": [],
    # class-wise positive selection: per-class quantiles (bincount-free counts)
    "teach_class_keep": ["stage.module.pos_class_keep=0.5", "stage.module.pos_threshold=0.9"],
    "propagate": ["stage.module.scl.start_step=0", "stage.module.ignore_bottom_rows=4",
                  "stage.module.ignore_top_rows=2"],
    # class-balanced pseudo-label weights: running shares kept on the device
    "teach_balanced": ["stage.module.class_balance.power=0.5", "stage.module.pos_threshold=0.9"],
    "propagate_balanced": ["stage.module.class_balance.power=0.5", "stage.module.scl.start_step=0"],
    # the teacher's logits corrected toward a class prior (a buffer, like the running shares)
    "teach_prior": ["stage.module.prior_correction.strength=0.5",
                    "stage.module.prior_correction.prior=[" + ",".join(["0.05"] * 19) + "]"],
}


@pytest.mark.parametrize("variant", list(STAGES))
def test_non_logging_steps_do_not_synchronise(variant, data_toy_root, tmp_path):
    stage = variant.split("_")[0]
    counter = CountSyncs()
    cfg = stage_cfg(stage, data_toy_root, tmp_path, tmp_path / "run", *GPU_LIKE, *STAGES[variant])
    assert run_stage(cfg, tmp_path / "run", extra_callbacks=[counter])["status"] == "complete"
    assert sorted(counter.per_step) == list(range(STEPS)) and counter.logging_steps == {2, 5}
    quiet = {step: calls for step, calls in counter.per_step.items() if step not in counter.logging_steps}
    assert quiet == {step: [] for step in quiet}, quiet
    # the probe sees the divergence guard's one read of its flag on the check steps (so the zeros mean something)
    for step in counter.logging_steps:
        assert ("tolist", "callbacks/divergence.py:_read_flag") in counter.per_step[step], counter.per_step[step]

