"""Align with a frozen decoder (paper figure): decoder weights and BatchNorm statistics stay the source's."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from atp.stages import build_stage_module
from tests.helpers.stages import stage_cfg


def _align_two_steps(tmp_path, *overrides: str):
    # no warm-up: the two steps move every trainable weight visibly (the schedule's first steps have lr ≈ 0)
    cfg = stage_cfg("align", tmp_path, tmp_path, tmp_path / "run", "stage.module.freeze_decoder=true",
                    "stage.module.schedule.warmup_steps=0", *overrides)
    model = instantiate(cfg.model)
    source = copy.deepcopy(model)
    module = build_stage_module(cfg.stage, model=model, num_classes=cfg.dataset.num_classes, seed=cfg.seed)
    generator = torch.Generator().manual_seed(0)
    batches = [{"img": 2 + 3 * torch.randn(2, 3, 32, 32, generator=generator), "name": ["a", "b"]}
               for _ in range(2)]
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return source, module.student


def _decoder_bn(model):
    return {n: m for n, m in model.decode_head.named_modules() if isinstance(m, _BatchNorm)}


@pytest.mark.parametrize("freeze_bn", [None, "false"])
def test_frozen_decoder_keeps_its_bn_statistics_unless_asked_to_re_estimate(tmp_path, freeze_bn):
    extra = () if freeze_bn is None else (f"stage.module.freeze_decoder_bn={freeze_bn}",)
    source, student = _align_two_steps(tmp_path, *extra)
    before, after = _decoder_bn(source), _decoder_bn(student)
    assert before
    for name, param in source.decode_head.named_parameters():
        assert torch.equal(param, dict(student.decode_head.named_parameters())[name]), name
    # the encoder is what Align adapts: its weights took the two steps (not all of them: at 32² every attention
    # has one key, so the queries get no gradient), a LayerNorm's too, which has no weight decay to move it
    trained = dict(student.encoder.named_parameters())
    changed = [n for n, p in source.encoder.named_parameters() if not torch.equal(p, trained[n])]
    assert {"patch_embed1.proj.weight", "patch_embed1.norm.weight"} <= set(changed), changed[:5]
    assert len(changed) > len(trained) / 2, (len(changed), len(trained))
    for name, norm in after.items():
        same = torch.equal(norm.running_mean, before[name].running_mean)
        # freeze_decoder_bn follows freeze_decoder (None): statistics kept; false: re-estimated on target
        assert same == (freeze_bn is None), name
