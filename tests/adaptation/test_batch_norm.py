"""BatchNorm re-estimation on target images: the shared helper and the end-of-stage refresh."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from atp.adaptation import reestimate_batch_norm
from atp.errors import UserError
from atp.run import run_stage
from atp.stages import build_stage_module
from tests.helpers.stages import stage_cfg


class TinySegmentor(nn.Module):
    """extract = identity, decode = BatchNorm + dropout: the statistics must see the BN input as is."""

    proj_head = None

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(2, momentum=0.1)
        self.drop = nn.Dropout(0.5)

    def extract(self, x):
        return x

    def decode(self, feats):
        return self.drop(self.norm(feats))


def test_statistics_are_the_average_over_the_batches_and_modes_come_back():
    torch.manual_seed(0)
    model = TinySegmentor().train()
    model.drop.eval()  # a mixed-mode model: each module's mode must be restored as it was
    model.norm.running_mean.fill_(5.0)
    batches = [torch.randn(3, 2, 4, 4) * 2 + 1, torch.randn(3, 2, 4, 4) - 3]
    assert reestimate_batch_norm(model, iter(batches)) == 2
    # momentum=None: the plain average of each batch's mean and unbiased variance (equal batch sizes)
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    variances = torch.stack([b.transpose(0, 1).reshape(2, -1).var(dim=1) for b in batches]).mean(0)
    assert torch.allclose(model.norm.running_mean, means, atol=1e-6)
    assert torch.allclose(model.norm.running_var, variances, atol=1e-5)
    assert int(model.norm.num_batches_tracked) == 2 and model.norm.momentum == 0.1
    assert model.training and model.norm.training and not model.drop.training


def test_no_batch_keeps_the_old_statistics():
    model = TinySegmentor()
    model.norm.running_mean.fill_(5.0)
    with pytest.raises(ValueError, match="at least one batch"):
        reestimate_batch_norm(model, iter([]))
    assert torch.equal(model.norm.running_mean, torch.full((2,), 5.0))


@pytest.mark.parametrize("refresh, expected", [(1, 1), (None, 4)])
def test_teach_refreshes_the_student_statistics_after_its_last_step(refresh, expected, data_toy_root, tmp_path):
    """8 target-train images, training batches of 2: one batch, or one pass (4). The count of batches the
    student's BN layers tracked since their reset is what the refresh saw; the teacher keeps its own statistics."""
    run_dir = tmp_path / "run"
    cfg = stage_cfg("teach", data_toy_root, tmp_path, run_dir, "init_from=null", "trainer.max_steps=2",
                    "trainer.val_check_interval=2", f"stage.module.bn_refresh_batches={'null' if refresh is None else refresh}")
    assert run_stage(cfg, run_dir)["status"] == "complete"
    state = torch.load(run_dir / "checkpoints" / "final.ckpt", weights_only=False)["state_dict"]
    student = {k: v for k, v in state.items() if k.startswith("student.") and k.endswith("num_batches_tracked")}
    assert student and all(int(v) == expected for v in student.values())
    teacher = [int(v) for k, v in state.items()
               if k.startswith("teacher.model.decode_head.") and k.endswith("num_batches_tracked")]
    assert teacher and all(v == 2 for v in teacher)  # its two train-mode passes of the weak batches, never reset


def _student_bn_buffers(ckpt):
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    return {k: v for k, v in state.items()
            if k.startswith("student.") and k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_the_refresh_estimates_what_the_adabn_stage_estimates_from_the_same_weights(data_toy_root, tmp_path):
    """Teach without the refresh, then the AdaBN stage on its checkpoint, gives the statistics that Teach with
    the refresh ends with: one estimation, on the same images in the same order."""
    common = ("init_from=null", "trainer.max_steps=2", "trainer.val_check_interval=2")
    refreshed, plain, adabn = (tmp_path / name for name in ("refreshed", "plain", "adabn"))
    for run_dir, refresh in ((refreshed, "null"), (plain, "0")):
        cfg = stage_cfg("teach", data_toy_root, tmp_path, run_dir, *common, f"stage.module.bn_refresh_batches={refresh}")
        assert run_stage(cfg, run_dir)["status"] == "complete"
    cfg = stage_cfg("adabn", data_toy_root, tmp_path, adabn, f"init_from={plain / 'checkpoints' / 'final.ckpt'}")
    assert run_stage(cfg, adabn)["status"] == "complete"
    after_refresh = _student_bn_buffers(refreshed / "checkpoints" / "final.ckpt")
    after_adabn = _student_bn_buffers(adabn / "checkpoints" / "final.ckpt")
    before = _student_bn_buffers(plain / "checkpoints" / "final.ckpt")
    assert after_refresh.keys() == after_adabn.keys() and after_refresh
    assert any(not torch.equal(after_refresh[k], before[k]) for k in after_refresh)  # the refresh changed them
    for key, value in after_refresh.items():
        assert torch.allclose(value.float(), after_adabn[key].float(), rtol=1e-5, atol=1e-6), key


@pytest.mark.parametrize("refresh, expected", [("0", 2), ("null", 4)])
def test_align_as_the_toy_recipe_runs_it_refreshes_the_decoder_statistics(refresh, expected, data_toy_root, tmp_path):
    """The toy recipe's Align: frozen decoder weights, BN statistics tracked in training mode (two steps), then
    re-estimated on one pass of the 8 target-train images in batches of 2 (4) when the refresh is on."""
    run_dir = tmp_path / "run"
    cfg = stage_cfg("align", data_toy_root, tmp_path, run_dir, "init_from=null", "trainer.max_steps=2",
                    "trainer.val_check_interval=2", "stage.module.freeze_decoder=true",
                    "stage.module.freeze_decoder_bn=false", f"stage.module.bn_refresh_batches={refresh}")
    assert run_stage(cfg, run_dir)["status"] == "complete"
    counts = [int(v) for k, v in _student_bn_buffers(run_dir / "checkpoints" / "final.ckpt").items()
              if k.startswith("student.decode_head.") and k.endswith("num_batches_tracked")]
    assert counts and all(c == expected for c in counts)


def test_align_refuses_to_refresh_statistics_it_was_told_to_hold(tmp_path):
    cfg = stage_cfg("align", tmp_path, tmp_path, tmp_path / "run", "stage.module.freeze_decoder=true",
                    "stage.module.bn_refresh_batches=null")
    with pytest.raises(UserError, match="stage.module.freeze_decoder_bn=false or stage.module.bn_refresh_batches=0"):
        build_stage_module(cfg.stage, model=instantiate(cfg.model), num_classes=cfg.dataset.num_classes, seed=cfg.seed)
