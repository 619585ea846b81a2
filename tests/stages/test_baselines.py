"""The source-free baselines (tent, shot, selftrain): their losses by hand, and which parameters each updates."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from atp.adaptation import (
    entropy_loss,
    information_maximization_loss,
    marginal_entropy,
    thresholded_pseudo_label_ce,
)
from tests.helpers.stages import train_two_steps


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def entropy(probs):
    return -sum(p * math.log(p) for p in probs)


# Two images of two pixels each, three classes: LOGITS[image][pixel][class].
LOGITS = [[[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]], [[-1.0, 3.0, 0.0], [0.4, -0.2, 1.5]]]


def as_batch(logits):
    """(B, C, 1, N) float64 tensor from nested lists [image][pixel][class]."""
    return torch.tensor(logits, dtype=torch.float64).permute(0, 2, 1).unsqueeze(2)


PROBS = [[softmax(pixel) for pixel in image] for image in LOGITS]
PIXELS = [p for image in PROBS for p in image]


def test_entropy_loss_is_the_mean_pixel_entropy_in_nats():
    expected = sum(entropy(p) for p in PIXELS) / 4
    assert entropy_loss(as_batch(LOGITS)).item() == pytest.approx(expected, rel=1e-6)
    uniform = torch.zeros(1, 5, 2, 2)
    assert entropy_loss(uniform).item() == pytest.approx(math.log(5), rel=1e-6)  # not normalised by log C


def test_marginal_entropy_is_that_of_the_mean_over_pixels_and_batch():
    mean = [sum(p[c] for p in PIXELS) / 4 for c in range(3)]
    expected = entropy(mean)
    assert marginal_entropy(as_batch(LOGITS)).item() == pytest.approx(expected, rel=1e-6)
    # not the mean of the per-image marginals' entropies (the mean is over the batch too)
    per_image = sum(entropy([sum(p[c] for p in image) / 2 for c in range(3)]) for image in PROBS) / 2
    assert abs(expected - per_image) > 1e-3
    assert marginal_entropy(as_batch(LOGITS[:1])).item() == pytest.approx(
        entropy([sum(p[c] for p in PROBS[0]) / 2 for c in range(3)]), rel=1e-6)


@pytest.mark.parametrize("div_weight", [1.0, 0.5])
def test_information_maximization_is_entropy_minus_weighted_diversity(div_weight):
    ent = sum(entropy(p) for p in PIXELS) / 4
    div = entropy([sum(p[c] for p in PIXELS) / 4 for c in range(3)])
    total, ent_term, div_term = information_maximization_loss(as_batch(LOGITS), div_weight=div_weight)
    assert total.item() == pytest.approx(ent - div_weight * div, rel=1e-6)
    assert (ent_term.item(), div_term.item()) == pytest.approx((ent, div), rel=1e-6)


def test_thresholded_ce_ignores_pixels_below_the_threshold_and_counts_them_in_the_mean():
    logits = as_batch(LOGITS[:1] + [[[0.0, 1.0, 2.0], [1.0, 1.0, -1.0]]])  # (2, 3, 1, 2)
    labels = torch.tensor([[[0, 2]], [[1, 0]]])
    confidence = torch.tensor([[[0.95, 0.5]], [[0.99, 0.9]]], dtype=torch.float64)
    pixel_logits = [LOGITS[0][0], LOGITS[0][1], [0.0, 1.0, 2.0], [1.0, 1.0, -1.0]]
    pixel_labels = [0, 2, 1, 0]
    ce = [-math.log(softmax(px)[label]) for px, label in zip(pixel_logits, pixel_labels, strict=True)]
    # at 0.95 the pixels at 0.5 and 0.9 are ignored (0.95 itself is kept); the mean is over all 4 pixels
    assert thresholded_pseudo_label_ce(logits, labels, confidence, 0.95).item() == pytest.approx(
        (ce[0] + ce[2]) / 4, rel=1e-6)
    assert thresholded_pseudo_label_ce(logits, labels, confidence, 0.0).item() == pytest.approx(sum(ce) / 4, rel=1e-6)
    assert thresholded_pseudo_label_ce(logits, labels, confidence, 0.999).item() == 0.0


# ---------------------------------------------------------------- which parameters each stage updates

class StudentAfterFirstStep(Callback):
    """Keeps a copy of the student's parameters after the first optimiser step."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 1:
            self.params = {n: p.detach().clone() for n, p in module.student.named_parameters()}


def _changed(before: nn.Module, after: nn.Module) -> set[str]:
    theirs = dict(after.named_parameters())
    return {name for name, param in before.named_parameters() if not torch.equal(param, theirs[name])}


def _optimised(module) -> set[int]:
    return {id(p) for group in module.optimizers().optimizer.param_groups for p in group["params"]}


def test_tent_updates_only_the_norm_affine_parameters_of_the_prediction_path(tmp_path):
    source, module = train_two_steps(tmp_path, "tent")
    norms = {f"{name}.{kind}" for name, layer in source.named_modules()
             if isinstance(layer, nn.LayerNorm | _BatchNorm) and name.startswith(("encoder.", "decode_head."))
             for kind in ("weight", "bias")}
    assert any(n.startswith("encoder.") for n in norms) and any(n.startswith("decode_head.") for n in norms)
    assert _changed(source, module.student) == norms  # every norm parameter moved, nothing else did
    params = dict(module.student.named_parameters())
    assert _optimised(module) == {id(params[n]) for n in norms}
    assert {n for n, p in params.items() if p.requires_grad} == norms  # no gradient kept for the others
    # BatchNorm on batch statistics (training mode): the running statistics followed the target batches
    bn = "decode_head.fuse_layer.bottleneck.bn.running_mean"
    assert not torch.equal(dict(source.named_buffers())[bn], dict(module.student.named_buffers())[bn])


@pytest.mark.parametrize("freeze", ["classifier", "decoder"])
def test_shot_freezes_the_hypothesis_and_adapts_the_features(tmp_path, freeze):
    source, module = train_two_steps(tmp_path, "shot", f"stage.module.freeze={freeze}")
    changed = _changed(source, module.student)
    names = {n for n, _ in source.named_parameters()}
    encoder = {n for n in names if n.startswith("encoder.")}
    decoder = {n for n in names if n.startswith("decode_head.")}
    assert not changed & {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias"}
    assert not any(n.startswith("proj_head.") for n in changed)
    assert len(changed & encoder) > len(encoder) // 2
    if freeze == "classifier":
        assert changed & decoder
    else:  # the whole decode head, BatchNorm statistics included
        assert not changed & decoder
        before, after = source.decode_head.state_dict(), module.student.decode_head.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_selftrain_trains_the_student_and_moves_the_teacher_by_the_ema_rule(tmp_path):
    first = StudentAfterFirstStep()
    # threshold 0: an untrained teacher is never 0.968-confident and the CE would be 0
    source, module = train_two_steps(tmp_path, "selftrain", "stage.module.pos_threshold=0.0", callbacks=[first])
    changed = _changed(source, module.student)
    encoder = {n for n, _ in source.named_parameters() if n.startswith("encoder.")}
    assert "decode_head.conv_seg.weight" in changed and len(changed & encoder) > len(encoder) // 2
    # teacher: θ0 copied at train start, not updated at step 0, α_1 = 0.5 at the start of step 1
    initial = dict(source.named_parameters())
    for name, param in module.teacher.model.named_parameters():
        expected = torch.lerp(initial[name], first.params[name], 0.5)
        assert torch.equal(param, expected), name
    name = "decode_head.conv_seg.weight"
    teacher = dict(module.teacher.model.named_parameters())[name]
    assert not torch.equal(teacher, initial[name]) and not torch.equal(teacher, first.params[name])
