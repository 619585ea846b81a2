"""Albumentations pipelines for training, evaluation and prediction (spec §2.5, §2.6).

Training: keep-ratio resize into the dataset scale → random crop (``cat_max_ratio`` rejection on
labels where labels are allowed) → horizontal flip → normalise → pad to the crop size (image 0
after normalisation, label 255), in mmseg's order. Evaluation/prediction: resize → normalise.
Labels of evaluation samples are left at their original size.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from atp.data.labels import IGNORE_INDEX

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def rescale_size(width: int, height: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv ``rescale`` semantics: the largest keep-ratio size fitting inside ``(long, short)``.

    Returns ``(new_width, new_height)``; e.g. GTA 1914×1052 in (1280, 720) → (1280, 704).
    """
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(width, height), short_edge / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


class KeepRatioResize(A.DualTransform):
    """Resize to :func:`rescale_size` of ``scale``: bilinear for the image, nearest for the mask."""

    def __init__(self, scale: Sequence[int], p: float = 1.0):
        super().__init__(p=p)
        self.scale = tuple(int(s) for s in scale)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        return {"size": rescale_size(width, height, self.scale)}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return img if img.shape[1::-1] == size else cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return mask if mask.shape[1::-1] == size else cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale",)


class CatMaxRatioCrop(A.DualTransform):
    """mmseg ``RandomCrop``: crop ``(height, width)`` (smaller where the image is smaller).

    With a mask and ``cat_max_ratio < 1``, up to ``max_tries`` boxes are drawn; the first one with
    at least two non-ignore classes and no class covering ``cat_max_ratio`` or more of its valid
    pixels is kept, else the last one drawn. Without a mask (unlabelled streams) it is a plain
    random crop.
    """

    def __init__(
        self,
        height: int,
        width: int,
        cat_max_ratio: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        max_tries: int = 10,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.height, self.width = int(height), int(width)
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = ignore_index
        self.max_tries = max_tries

    def _random_box(self, img_h: int, img_w: int) -> tuple[int, int]:
        top = int(self.random_generator.integers(0, max(img_h - self.height, 0) + 1))
        left = int(self.random_generator.integers(0, max(img_w - self.width, 0) + 1))
        return top, left

    def _acceptable(self, mask: np.ndarray, top: int, left: int) -> bool:
        crop = mask[top : top + self.height, left : left + self.width]
        counts = np.bincount(crop.ravel(), minlength=256)
        counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        img_h, img_w = params["shape"][:2]
        top, left = self._random_box(img_h, img_w)
        mask = data.get("mask")
        if mask is not None and self.cat_max_ratio < 1.0:
            for _ in range(self.max_tries - 1):
                if self._acceptable(mask, top, left):
                    break
                top, left = self._random_box(img_h, img_w)
        return {"top": top, "left": left}

    def apply(self, img: np.ndarray, top: int, left: int, **params: Any) -> np.ndarray:
        return img[top : top + self.height, left : left + self.width]

    def apply_to_mask(self, mask: np.ndarray, top: int, left: int, **params: Any) -> np.ndarray:
        return mask[top : top + self.height, left : left + self.width]

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "cat_max_ratio", "ignore_index", "max_tries")


def _normalize() -> A.Normalize:
    return A.Normalize(mean=MEAN, std=STD, max_pixel_value=1.0)


def build_train_transform(
    scale: Sequence[int],
    crop_size: Sequence[int] | None,
    cat_max_ratio: float = 1.0,
    flip_prob: float = 0.5,
) -> A.Compose:
    """Training pipeline; ``crop_size`` is ``(height, width)`` or ``None`` for whole resized images."""
    steps: list[A.BasicTransform] = [KeepRatioResize(scale)]
    if crop_size is not None:
        steps.append(CatMaxRatioCrop(crop_size[0], crop_size[1], cat_max_ratio))
    steps += [A.HorizontalFlip(p=flip_prob), _normalize()]
    if crop_size is not None:
        steps.append(
            A.PadIfNeeded(
                min_height=crop_size[0],
                min_width=crop_size[1],
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=IGNORE_INDEX,
            )
        )
    return A.Compose(steps, seed=0)


def build_eval_transform(scale: Sequence[int]) -> A.Compose:
    """Evaluation/prediction pipeline: keep-ratio resize and normalise, applied to the image only."""
    return A.Compose([KeepRatioResize(scale), _normalize()], seed=0)


def reseed(transform: A.Compose, seed: int) -> None:
    """Make the next call of ``transform`` depend only on ``seed`` (one generator shared by all steps)."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def to_rgb_uint8(img: torch.Tensor) -> np.ndarray:
    """A normalised (3, H, W) image tensor back to RGB uint8 (H, W, 3): the inverse of the normalisation above."""
    mean, std = img.new_tensor(MEAN).view(3, 1, 1), img.new_tensor(STD).view(3, 1, 1)
    return (img.float() * std + mean).clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()
