"""Align with a frozen decoder (paper figure): decoder weights and BatchNorm statistics stay the source's."""

from __future__ import annotations

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tests.helpers.stages import train_two_steps


def _align_two_steps(tmp_path, *overrides: str):
    source, module = train_two_steps(tmp_path, "align", "stage.module.freeze_decoder=true", *overrides)
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
