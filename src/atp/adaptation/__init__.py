"""Adaptation building blocks of ATP on plain tensors and `nn.Module`s (no Lightning, no data)."""

from .augment import AugParams, StrongAugment, blur_kernel_size, color_jitter, gaussian_blur
from .batch_norm import batch_norms, bn_estimation_mode, forward_for_statistics, reestimate_batch_norm
from .class_balance import ClassShare
from .crop import class_balanced_crop_box, crop
from .ema import EMATeacher, ema_alpha, is_stochastic_layer
from .losses import (
    curriculum_entropy_loss,
    diversity_loss,
    entropy_loss,
    information_maximization_loss,
    marginal_entropy,
    mean_negative_classes,
    negative_pseudo_label_loss,
    normalized_entropy,
    prototype_contrastive_loss,
    pseudo_label_ce,
    pseudo_label_ce_and_negative,
    thresholded_pseudo_label_ce,
)
from .mix import classmix_masks, mix, mixed_targets, row_ignore_weights
from .prototypes import PrototypeEstimator, downscale_labels
from .pseudo_labels import (
    class_balanced_pseudo_labels,
    class_counts,
    class_quantile_thresholds,
    pseudo_labels_from_logits,
    threshold_pseudo_labels,
)
from .ranking import image_entropy_scores, rank_target_images

__all__ = [
    "AugParams",
    "ClassShare",
    "EMATeacher",
    "PrototypeEstimator",
    "StrongAugment",
    "batch_norms",
    "blur_kernel_size",
    "bn_estimation_mode",
    "class_balanced_crop_box",
    "class_balanced_pseudo_labels",
    "class_counts",
    "class_quantile_thresholds",
    "classmix_masks",
    "color_jitter",
    "crop",
    "curriculum_entropy_loss",
    "diversity_loss",
    "downscale_labels",
    "forward_for_statistics",
    "ema_alpha",
    "entropy_loss",
    "gaussian_blur",
    "image_entropy_scores",
    "information_maximization_loss",
    "is_stochastic_layer",
    "marginal_entropy",
    "mean_negative_classes",
    "mix",
    "mixed_targets",
    "negative_pseudo_label_loss",
    "normalized_entropy",
    "prototype_contrastive_loss",
    "pseudo_label_ce",
    "pseudo_label_ce_and_negative",
    "pseudo_labels_from_logits",
    "rank_target_images",
    "reestimate_batch_norm",
    "row_ignore_weights",
    "threshold_pseudo_labels",
    "thresholded_pseudo_label_ce",
]
