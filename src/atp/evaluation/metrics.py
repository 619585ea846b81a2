"""Segmentation metrics: confusion matrix, per-class IoU and mIoU over class subsets (spec §2.3, §11).

Confusion matrices follow torchmetrics: ``confmat[t, p]`` counts pixels of label ``t`` predicted as
``p``; pixels labelled ``ignore_index`` (255) are left out. IoU_c = I_c / U_c with I_c = confmat[c, c]
and U_c = row_c + column_c − I_c; a class with U_c = 0 (absent from labels and predictions) gets NaN
and is skipped by the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.functional.classification import multiclass_confusion_matrix

__all__ = ["IGNORE_INDEX", "SUBSETS", "SegMetric", "confusion_matrix", "iou_per_class", "mean_iou"]

IGNORE_INDEX = 255

#: Class subsets (Cityscapes train ids): all 19; SYNTHIA's 16 (no terrain, truck, train) and 13
#: (also no wall, fence, pole).
SUBSETS: dict[str, list[int]] = {
    "all19": list(range(19)),
    "syn16": [c for c in range(19) if c not in (9, 14, 16)],
    "syn13": [c for c in range(19) if c not in (3, 4, 5, 9, 14, 16)],
}


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int = 19,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``(num_classes, num_classes)`` int64 confusion matrix of label maps, on their device."""
    return multiclass_confusion_matrix(preds, labels, num_classes, ignore_index=ignore_index)


def iou_per_class(confmat: torch.Tensor) -> torch.Tensor:
    """IoU per class in [0, 1] (float64); NaN where the class is absent from labels and predictions."""
    confmat = confmat.to(torch.float64)
    intersection = confmat.diagonal()
    union = confmat.sum(dim=0) + confmat.sum(dim=1) - intersection
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.full_like(union, float("nan")))


def mean_iou(confmat: torch.Tensor, subset: str | Sequence[int] | None = None) -> torch.Tensor:
    """mIoU × 100 over ``subset`` (a ``SUBSETS`` name or class indices; default all), NaN classes skipped.

    Returns a 0-dim float64 tensor (NaN when no class of the subset occurs at all).
    """
    ious = iou_per_class(confmat)
    if subset is not None:
        indices = SUBSETS[subset] if isinstance(subset, str) else [int(c) for c in subset]
        if any(not 0 <= c < ious.numel() for c in indices):
            raise ValueError(f"class indices {indices} out of range for {ious.numel()} classes")
        ious = ious[torch.as_tensor(indices, dtype=torch.long, device=ious.device)]
    return ious.nanmean() * 100


class SegMetric(nn.Module):
    """Accumulates a confusion matrix over a split and reports mIoU per subset and per-class IoU.

    ``update(preds, labels)`` takes label maps ``(B, H, W)`` or scores ``(B, C, H, W)`` (arg-maxed);
    the state lives on the device of the data. ``compute()`` returns ``{"mIoU/<subset>": …,
    "IoU/<class>": …, "pixel_acc": …}`` (all × 100, per-class NaN where the class never occurs);
    ``reset()`` clears it. These names are the ones ``atp.evaluate`` reports and the stages log
    (prefixed ``val/``) and keep in their manifests.
    """

    def __init__(self, num_classes: int = 19, subsets: Sequence[str] = ("all19",),
                 ignore_index: int = IGNORE_INDEX, class_names: Sequence[str] | None = None,
                 validate_args: bool = True) -> None:
        super().__init__()
        unknown = [name for name in subsets if name not in SUBSETS]
        if unknown:
            raise ValueError(f"unknown class subsets {unknown}; known: {list(SUBSETS)}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.subsets = tuple(subsets)
        self.class_names = tuple(class_names) if class_names is not None else tuple(map(str, range(num_classes)))
        self.confmat_metric = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index,
                                                        validate_args=validate_args)

    @torch.no_grad()
    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        if preds.dim() == labels.dim() + 1:
            preds = preds.argmax(dim=1)
        if preds.shape != labels.shape:
            raise ValueError(f"prediction shape {tuple(preds.shape)} differs from label shape {tuple(labels.shape)}")
        if self.confmat_metric.device != preds.device:
            self.confmat_metric.to(preds.device)
        self.confmat_metric.update(preds, labels.to(preds.device))

    @property
    def confmat(self) -> torch.Tensor:
        """The accumulated confusion matrix (labels × predictions); zeros before the first update."""
        if self.confmat_metric.update_count == 0:
            return torch.zeros_like(self.confmat_metric.confmat)
        return self.confmat_metric.compute()

    def compute(self) -> dict[str, torch.Tensor]:
        return self.scores(self.confmat)

    def scores(self, confmat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The metrics of ``compute()`` for a given confusion matrix (e.g. one already all-reduced)."""
        results = {f"mIoU/{name}": mean_iou(confmat, name) for name in self.subsets}
        ious = iou_per_class(confmat) * 100
        results.update({f"IoU/{name}": ious[index] for index, name in enumerate(self.class_names)})
        results["pixel_acc"] = confmat.diagonal().sum() / confmat.sum().clamp_min(1) * 100
        return results

    def reset(self) -> None:
        self.confmat_metric.reset()
