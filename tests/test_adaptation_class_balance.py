"""Class-balanced pseudo-label weights (ClassShare) and their use in Teach/Propagate."""

from __future__ import annotations

import pytest
import torch

from atp.adaptation import ClassShare
from atp.run import run_stage
from tests.stage_helpers import stage_cfg


def test_share_is_the_batch_share_first_then_a_running_mean():
    share = ClassShare(3, power=1.0)
    share.update(0, torch.tensor([[0, 0, 0, 1]]))
    assert torch.allclose(share.share, torch.tensor([0.75, 0.25, 0.0]))
    share.update(1, torch.tensor([2, 2]))  # step 1: the mean of the two batch shares
    assert torch.allclose(share.share, torch.tensor([0.375, 0.125, 0.5]))
    share.update(2, torch.full((2, 2), 255))  # nothing labelled: unchanged
    assert torch.allclose(share.share, torch.tensor([0.375, 0.125, 0.5]))


def test_one_update_counts_every_label_tensor_of_the_step():
    share = ClassShare(2, power=1.0)
    share.update(0, torch.tensor([0, 0]), torch.tensor([[1, 255]]))  # easy and hard labels of one step
    assert torch.allclose(share.share, torch.tensor([2 / 3, 1 / 3]))


def test_share_becomes_an_ema_with_the_given_momentum():
    share = ClassShare(2, power=1.0, momentum=0.6)
    for step in range(3):  # keep = min(t/(t+1), 0.6): 0, 0.5, 0.6
        share.update(step, torch.tensor([0]))
    share.update(3, torch.tensor([1]))  # keep 0.6: [0.6, 0.4]
    assert torch.allclose(share.share, torch.tensor([0.6, 0.4]))


def test_weights_follow_the_inverse_share_with_mean_one_over_labelled_pixels():
    share = ClassShare(3, power=1.0)
    share.share.copy_(torch.tensor([0.5, 0.25, 0.25]))
    # raw weights 1/0.5 = 2, 1/0.25 = 4, ignored 0; mean over the two labelled pixels is 3
    weights = share.weights(torch.tensor([[0, 1, 255]]))
    assert torch.allclose(weights, torch.tensor([[2 / 3, 4 / 3, 0.0]]))
    share.power = 0.5  # sqrt: 1.414, 2 → mean 1.707
    weights = share.weights(torch.tensor([0, 1]))
    assert torch.allclose(weights, torch.tensor([2**0.5, 2.0]) / ((2**0.5 + 2.0) / 2))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="power"):
        ClassShare(3, power=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        ClassShare(3, momentum=1.0)


@pytest.mark.parametrize("stage", ["teach", "propagate"])
def test_stage_keeps_the_running_share_in_its_checkpoint(stage, data_toy_root, tmp_path):
    """On: the share is a checkpoint buffer, moved off the uniform start. Off (the paper recipe): no new key."""
    extra = ["stage.module.scl.start_step=0"] if stage == "propagate" else []
    run_dir = tmp_path / "on"
    cfg = stage_cfg(stage, data_toy_root, tmp_path, run_dir, "init_from=null", "trainer.max_steps=2",
                    "trainer.val_check_interval=2", "stage.module.class_balance.power=0.5", *extra)
    assert run_stage(cfg, run_dir)["status"] == "complete"
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert torch.isclose(state["class_share.share"].sum(), torch.tensor(1.0))
    assert not torch.allclose(state["class_share.share"], torch.full((19,), 1 / 19))

    run_dir = tmp_path / "off"
    cfg = stage_cfg(stage, data_toy_root, tmp_path, run_dir, "init_from=null", "trainer.max_steps=1",
                    "trainer.val_check_interval=1", *extra)
    run_stage(cfg, run_dir)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert not any(key.startswith("class_share.") for key in state)
