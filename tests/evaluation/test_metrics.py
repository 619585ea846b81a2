"""Confusion matrix, IoU and mIoU against hand-computed values (spec §2.3, §11)."""

from __future__ import annotations

import math

import pytest
import torch

from atp.evaluation.metrics import SUBSETS, SegMetric, confusion_matrix, iou_per_class, mean_iou

# 2×4 label map with one ignored pixel (255), and a prediction; the ignored pixel is predicted as class 4,
# which occurs nowhere else, so class 4 must come out absent (NaN) rather than IoU 0.
LABELS = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 3]]])
PREDS = torch.tensor([[[0, 1, 1, 1], [2, 0, 4, 3]]])
# rows = label, columns = prediction, counted by hand from the pairs (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (3,3)
CONFMAT = torch.tensor([
    [1, 1, 0, 0, 0],
    [0, 2, 0, 0, 0],
    [1, 0, 1, 0, 0],
    [0, 0, 0, 1, 0],
    [0, 0, 0, 0, 0],
])
# IoU = I / (row + column − I): class 0: 1/(2+2−1), class 1: 2/(2+3−2), class 2: 1/(2+1−1), class 3: 1/1
IOUS = [1 / 3, 2 / 3, 1 / 2, 1.0, math.nan]


def test_confusion_matrix_ignores_255():
    assert torch.equal(confusion_matrix(PREDS, LABELS, num_classes=5), CONFMAT)


def test_iou_per_class_and_absent_class():
    ious = iou_per_class(CONFMAT)
    assert ious[:4].tolist() == pytest.approx(IOUS[:4])
    assert math.isnan(ious[4])
    assert mean_iou(CONFMAT).item() == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2 + 1) / 4)  # 62.5
    assert mean_iou(CONFMAT, [1, 3, 4]).item() == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_class_only_predicted_counts_as_zero():
    preds = PREDS.clone()
    preds[0, 0, 0] = 4  # a label-0 pixel predicted as class 4: class 4 has union 1, intersection 0
    ious = iou_per_class(confusion_matrix(preds, LABELS, num_classes=5))
    assert ious[4].item() == 0.0
    # class 0: both label-0 pixels now wrong (I = 0), row 2, column 1 (the label-2 pixel) → 0 / 3
    assert ious[0].item() == 0.0
    assert ious[1].item() == pytest.approx(2 / 3)


def test_subsets_are_the_spec_classes():
    assert SUBSETS["all19"] == list(range(19))
    assert SUBSETS["syn16"] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
    assert SUBSETS["syn13"] == [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]


def _synthia_like_confmat() -> torch.Tensor:
    """19 classes: terrain (9) and train (16) absent, truck (14) always predicted as car (13)."""
    confmat = torch.zeros(19, 19, dtype=torch.long)
    for c in range(19):
        if c not in (9, 14, 16):
            confmat[c, c] = 5
    confmat[14, 13] = 5
    return confmat


def test_mean_iou_over_subsets_by_hand():
    confmat = _synthia_like_confmat()
    # IoU: car = 5/(5+10−5) = 0.5, truck = 0, terrain/train NaN, every other class 1.
    assert mean_iou(confmat, "all19").item() == pytest.approx(100 * (15 + 0.5 + 0) / 17)
    assert mean_iou(confmat, SUBSETS["syn16"]).item() == pytest.approx(100 * (15 + 0.5) / 16)
    assert mean_iou(confmat, "syn13").item() == pytest.approx(100 * (12 + 0.5) / 13)
    assert math.isnan(mean_iou(confmat, [9, 16]).item())
    with pytest.raises(ValueError):
        mean_iou(confmat, [19])


def test_seg_metric_accumulates_and_resets():
    metric = SegMetric(num_classes=5, subsets=(), class_names=["a", "b", "c", "d", "e"])
    half = LABELS.clone()
    half[0, 1] = 255  # first update: top row only
    metric.update(PREDS, half)
    rest = LABELS.clone()
    rest[0, 0] = 255  # second update: bottom row only, as one-hot scores (B, C, H, W)
    metric.update(torch.nn.functional.one_hot(PREDS, 5).permute(0, 3, 1, 2).float(), rest)
    assert torch.equal(metric.confmat, CONFMAT)
    result = metric.compute()
    assert result["IoU/b"].item() == pytest.approx(100 * 2 / 3)
    assert math.isnan(result["IoU/e"].item())
    metric.reset()
    assert metric.confmat.sum().item() == 0


def test_seg_metric_reports_subsets():
    labels = torch.arange(19).repeat_interleave(5).reshape(1, 5, 19)
    preds = labels.clone()
    preds[labels == 14] = 13
    labels[(labels == 9) | (labels == 16)] = 255
    metric = SegMetric(subsets=("all19", "syn16", "syn13"))
    metric.update(preds, labels)
    assert torch.equal(metric.confmat, _synthia_like_confmat())
    result = metric.compute()
    assert result["mIoU/all19"].item() == pytest.approx(100 * 15.5 / 17)
    assert result["mIoU/syn16"].item() == pytest.approx(100 * 15.5 / 16)
    assert result["mIoU/syn13"].item() == pytest.approx(100 * 12.5 / 13)
    assert result["IoU/13"].item() == pytest.approx(50.0) and result["IoU/14"].item() == 0.0
    # 17 labelled classes × 5 pixels; the 5 pixels of class 14 are predicted as 13
    assert result["pixel_acc"].item() == pytest.approx(100 * (17 * 5 - 5) / (17 * 5))
    with pytest.raises(ValueError, match="shape"):
        metric.update(preds[:, :2], labels)
    with pytest.raises(ValueError, match="unknown class subsets"):
        SegMetric(subsets=("syn15",))
