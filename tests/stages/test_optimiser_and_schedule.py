"""Optimiser groups and the poly + warm-up schedule (spec §4.1)."""

import math

import pytest
import torch

from atp.stages.base import parameter_groups, poly_warmup_factor


def test_warmup_starts_at_ratio_and_reaches_poly():
    # t = 0: poly = 1, warm-up = 1 - (1 - 0)(1 - 1e-6) = 1e-6
    assert poly_warmup_factor(0, 40000, 1.0, 1500, 1e-6) == pytest.approx(1e-6)
    # t = 750: poly = 1 - 750/40000 = 0.98125; warm-up = 1 - 0.5 * (1 - 1e-6) = 0.5000005
    assert poly_warmup_factor(750, 40000, 1.0, 1500, 1e-6) == pytest.approx(0.98125 * 0.5000005)
    # after warm-up: pure poly
    assert poly_warmup_factor(1500, 40000, 1.0, 1500, 1e-6) == pytest.approx(1 - 1500 / 40000)
    assert poly_warmup_factor(30000, 40000, 1.0, 1500, 1e-6) == pytest.approx(0.25)
    assert poly_warmup_factor(40000, 40000, 1.0, 1500, 1e-6) == 0.0
    assert poly_warmup_factor(100, 200, 2.0, 0, 1e-6) == pytest.approx(0.25)


def test_parameter_groups_follow_mmcv_names():
    model = torch.nn.ModuleDict(
        {
            "encoder": torch.nn.ModuleDict({"block": torch.nn.Linear(2, 2), "norm1": torch.nn.LayerNorm(2)}),
            "decode_head": torch.nn.ModuleDict({"conv": torch.nn.Linear(2, 2), "norm": torch.nn.LayerNorm(2)}),
        }
    )
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    groups = parameter_groups([*model.named_parameters(), ("x.frozen", frozen)], 6e-5, 0.01, 10.0, 0.0)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == pytest.approx(6e-4)
    assert by_name["head"]["weight_decay"] == 0.01  # "head" wins over "norm": the decoder norm is decayed
    assert len(by_name["head"]["params"]) == 4
    assert by_name["norm"]["weight_decay"] == 0.0 and len(by_name["norm"]["params"]) == 2
    assert by_name["encoder"]["lr"] == pytest.approx(6e-5) and len(by_name["encoder"]["params"]) == 2
    assert all(p is not frozen for g in groups for p in g["params"])
    assert not math.isnan(sum(g["lr"] for g in groups))


def test_poly_decays_to_min_lr_ratio():
    # mmcv poly with min_lr: (base − min) · (1 − t/T)^p + min, as a multiplier of base
    assert poly_warmup_factor(40000, 40000, 1.0, 0, 1e-6, min_ratio=0.1) == pytest.approx(0.1)
    assert poly_warmup_factor(20000, 40000, 1.0, 0, 1e-6, min_ratio=0.1) == pytest.approx(0.5 * 0.9 + 0.1)


def test_each_parameter_group_decays_to_min_lr(tmp_path):
    from hydra.utils import instantiate

    from atp.stages import build_stage_module
    from tests.helpers.stages import stage_cfg

    cfg = stage_cfg("source", tmp_path, tmp_path, tmp_path / "run", "trainer.max_steps=10",
                    "stage.module.schedule.warmup_steps=0", "stage.module.schedule.min_lr=1e-6",
                    "stage.module.optim.lr=1e-4")
    module = build_stage_module(cfg.stage, model=instantiate(cfg.model), num_classes=cfg.dataset.num_classes,
                                seed=cfg.seed)
    module.schedule_cfg["max_steps"] = 10
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    for _ in range(10):
        scheduler.optimizer.step()
        scheduler.step()
    # head ×10 and the rest both end at min_lr (absolute), not at a tenth of it for one of them
    assert all(g["lr"] == pytest.approx(1e-6) for g in scheduler.optimizer.param_groups)
