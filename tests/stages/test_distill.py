"""Black-box distillation: the softened KL, and the stage end to end from a source checkpoint."""

import math

import pytest
import torch

from atp.run import run_stage
from atp.stages.distill import distill_kl
from tests.helpers.stages import all_finite, logged_losses, stage_cfg


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_vanishes_when_the_student_matches_the_source_at_any_temperature(temperature):
    logits = 3 * torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(0))
    assert distill_kl(logits, logits.softmax(dim=1), temperature).item() == pytest.approx(0.0, abs=1e-5)
    assert distill_kl(torch.zeros_like(logits), logits.softmax(dim=1), temperature).item() > 0.01


def test_kl_against_a_hand_computed_value():
    # one pixel, two classes: p = (0.8, 0.2), student logits (0, 0) → q = (0.5, 0.5)
    target = torch.tensor([0.8, 0.2]).view(1, 2, 1, 1)
    expected = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert distill_kl(torch.zeros(1, 2, 1, 1), target).item() == pytest.approx(expected, rel=1e-5)
    # T = 2: p_T ∝ p^(1/2) = (√0.8, √0.2)/(√0.8+√0.2) = (2/3, 1/3); q_T = (0.5, 0.5); times T² = 4
    softened = 4 * (2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.5))
    assert distill_kl(torch.zeros(1, 2, 1, 1), target, 2.0).item() == pytest.approx(softened, rel=1e-5)


def test_distill_stage_trains_from_a_source_checkpoint(data_toy_root, tmp_path):
    source_dir = tmp_path / "source"
    source = run_stage(stage_cfg("source", data_toy_root, tmp_path, source_dir), source_dir)
    oracle = source_dir / source["final_ckpt"]
    run_dir = tmp_path / "distill"
    manifest = run_stage(stage_cfg("distill", data_toy_root, tmp_path, run_dir, f"stage.module.oracle={oracle}",
                                   "stage.module.temperature=2.0"), run_dir)
    assert manifest["status"] == "complete" and manifest["steps"] == 4
    kl = logged_losses(run_dir)["kl"]
    assert all_finite(kl) and len(set(kl)) > 1
    state = torch.load(run_dir / manifest["final_ckpt"], weights_only=False)["state_dict"]
    assert not any(k.startswith("oracle") for k in state)  # the black box is never saved
