"""Stages with an EMA teacher: re-initialisation, EMA update, pseudo-labels and class-balanced crop."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from atp.adaptation import (
    ClassShare,
    EMATeacher,
    StrongAugment,
    batch_norms,
    class_balanced_crop_box,
    crop,
    pseudo_labels_from_logits,
    reestimate_batch_norm,
)
from atp.data.datamodule import one_pass_batches
from atp.data.labels import IGNORE_INDEX
from atp.data.prepare import source_class_share
from atp.data.transforms import MEAN, STD
from atp.errors import UserError
from atp.stages.base import SegStage, _plain
from atp.stages.options import (
    ClassBalanceOptions,
    CropOptions,
    PriorCorrectionOptions,
    StrongAugOptions,
    option_group,
)


class PseudoLabels(NamedTuple):
    images: torch.Tensor  # weak images, cropped when the input was larger than the crop
    labels: torch.Tensor  # (B, H, W) teacher argmax
    confidence: torch.Tensor  # (B, H, W) teacher max probability
    quality: torch.Tensor  # scalar q: share of pixels with confidence >= conf_threshold
    probs: torch.Tensor | None  # (B, C, H, W) teacher probabilities (kept only when asked)


class MeanTeacherStage(SegStage):
    """A ``SegStage`` with an EMA teacher (spec §4.2–4.4), reset from the student at step 0."""

    teaches_with_pseudo_labels = True

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        strong_aug: StrongAugOptions | Mapping | None = None,
        crop: CropOptions | Mapping | None = None,
        ema_alpha: float = 0.999,
        conf_threshold: float = 0.968,
        teacher_bn_train: bool = True,
        class_balance: ClassBalanceOptions | Mapping | None = None,
        prior_correction: PriorCorrectionOptions | Mapping | None = None,
        bn_refresh_batches: int | None = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if bn_refresh_batches is not None and bn_refresh_batches < 0:
            raise ValueError(f"stage.module.bn_refresh_batches must be >= 0 (0 = off) or null (all images), "
                             f"got {bn_refresh_batches}")
        self.bn_refresh_batches = bn_refresh_batches
        balance = option_group(ClassBalanceOptions, _plain(class_balance), "class_balance")
        correction = option_group(PriorCorrectionOptions, _plain(prior_correction), "prior_correction")
        self.prior_strength = float(correction["strength"])
        if self.prior_strength < 0:
            raise ValueError(f"stage.module.prior_correction.strength must be >= 0 (0 = off), got {self.prior_strength}")
        if self.prior_strength > 0:
            self.register_buffer("source_class_prior", torch.tensor(self._prior(correction["prior"]),
                                                                    dtype=torch.float32))
        # the running share, for the balancing weights and/or the correction; only built when one is on, so
        # checkpoints of the paper recipe keep their keys (with power 0 the CE stays unweighted)
        tracked = balance["power"] > 0 or self.prior_strength > 0
        self.class_share = ClassShare(self.num_classes, **balance) if tracked else None
        self.teacher = EMATeacher(self.student, bn_train_mode=teacher_bn_train)
        self.ema_alpha = ema_alpha
        self.conf_threshold = conf_threshold
        self.strong_aug = StrongAugment(mean=MEAN, std=STD, **option_group(StrongAugOptions, _plain(strong_aug),
                                                                           "strong_aug"))
        self.crop_cfg = option_group(CropOptions, _plain(crop), "crop")

    def _prior(self, given: Any) -> list[float]:
        """The prior of the correction: ``prior_correction.prior`` when given (a list or a stats-file path), else
        the source labels' class share the checkpoint this stage started from carries."""
        if given is not None:
            return source_class_share(given, self.num_classes)
        if self.source_class_share is None or float(self.source_class_share.sum()) <= 0:
            raise UserError(
                "stage.module.prior_correction needs the source labels' class share: the checkpoint this stage "
                "starts from carries none (a released checkpoint, or one trained before atp recorded it). Give "
                "stage.module.prior_correction.prior= the source's sample_class_stats.json (python -m "
                f"atp.data.prepare dataset=<name> writes it) or a list of {self.num_classes} class shares, or "
                "set stage.module.prior_correction.strength=0")
        return self.source_class_share.tolist()

    def on_train_start(self) -> None:
        if self.global_step == 0:  # a new stage (not a resume): the teacher starts as the student
            self.teacher.reset_from(self.student)

    def finish_step(self) -> None:
        super().finish_step()
        if self.bn_refresh_batches != 0 and 0 < self.trainer.max_steps <= self.global_step:
            self.refresh_student_bn()

    def refresh_student_bn(self) -> int:
        """[I] After the last step, the student's BatchNorm statistics re-estimated as the AdaBN stage
        estimates them: the target-train stream without the strong augmentation (training crops and batch
        size, one pass or ``bn_refresh_batches`` batches). During the stage they were tracked on strongly
        augmented (and mixed) crops, which evaluation never sees. Weights are unchanged; the teacher keeps its
        own statistics. Returns the number of batches used. Under DDP each rank estimates on its share of the
        stream, as AdaBN does."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise RuntimeError("stage.module.bn_refresh_batches needs the ATP datamodule (its target-train images); "
                               "set it to 0 to train without one")
        loader = datamodule.statistics_loader()
        count = one_pass_batches(loader) if self.bn_refresh_batches is None else self.bn_refresh_batches
        batches = (batch["img"].to(self.device) for batch in itertools.islice(loader, count))
        return reestimate_batch_norm(self.student, batches)

    def update_teacher(self) -> None:
        """EMA update at the start of the step (spec §4.2); step 0 is the copy made at train start."""
        if self.global_step > 0:
            self.teacher.update(self.student, self.global_step, max_alpha=self.ema_alpha)

    def track_classes(self, *labels: torch.Tensor) -> None:
        """Fold this step's teacher labels into the running class shares (a no-op without ``class_balance``)."""
        if self.class_share is not None:
            self.class_share.update(self.global_step, *labels)

    def balanced(self, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor | None:
        """``weights`` times the class-balancing weights of ``labels``; ``weights`` itself when balancing is off."""
        if self.class_share is None or self.class_share.power == 0:
            return weights
        balance = self.class_share.weights(labels)
        return balance if weights is None else weights * balance

    def prior_corrected(self, logits: torch.Tensor) -> torch.Tensor:
        """[I] The teacher's logits corrected toward the source's class prior before its labels are taken
        (``ClassShare.prior_corrected``); unchanged when ``prior_correction.strength`` is 0 (the paper)."""
        if self.prior_strength == 0:
            return logits
        return self.class_share.prior_corrected(logits, self.source_class_prior, self.prior_strength)

    def hold_decoder_bn(self, frozen: bool) -> None:
        """With ``frozen``, the decoder's BatchNorms use (and keep) the source statistics (eval mode).

        Set at every step: Lightning (2.x) never calls ``train()`` at the start of fit and restores each
        submodule's own mode after validation, so an overridden ``train()`` would not hold.
        """
        if frozen:
            for norm in batch_norms(self.student.decode_head):
                norm.eval()

    def needs_crop(self, images: torch.Tensor) -> bool:
        size = self.crop_cfg.get("size")
        return size is not None and (images.shape[-2] > size[0] or images.shape[-1] > size[1])

    def target_crop(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` themselves, or for inputs larger than the crop (ACDC) the teacher's class-balanced crop
        (spec §2.6), the teacher updated first (spec §4.2). For stages that need no pseudo-labels but the crop."""
        if not self.needs_crop(images):
            return images
        self.update_teacher()
        return self.pseudo_label(images, need_confidence=False).images  # the crop only

    @torch.no_grad()
    def pseudo_label(self, images: torch.Tensor, keep_probs: bool = False, need_confidence: bool = True) -> PseudoLabels:
        """Teacher pseudo-labels on weak images; larger inputs get the class-balanced crop (spec §2.6).

        ``need_confidence=False`` skips the full-resolution softmax when neither the per-pixel confidence
        nor the quality ``q`` is used this step (``confidence``/``quality`` are then None).
        """
        logits = self.teacher(images)
        cropping = self.needs_crop(images)
        relabel = cropping and self.crop_cfg.get("regen_pseudo", True)
        # when the crop is re-labelled, the full-image pass only has to place the crop box: labels alone
        labels, confidence, quality, probs = self._labels_of(
            logits, images.shape[-2:], keep_probs and not relabel, need_confidence and not relabel
        )
        if cropping:
            size = tuple(self.crop_cfg["size"])
            box = class_balanced_crop_box(
                labels,
                size,
                tries=self.crop_cfg.get("tries", 10),
                cat_max_ratio=self.crop_cfg.get("cat_max_ratio", 0.75),
                generator=self.step_generator(),
                ignore_index=IGNORE_INDEX,
                num_classes=self.num_classes,
            )
            images = crop(images, box, size)
            if relabel:
                logits = self.teacher(images)
                labels, confidence, quality, probs = self._labels_of(
                    logits, images.shape[-2:], keep_probs, need_confidence
                )
            else:
                labels = crop(labels, box, size)
                if confidence is not None:
                    confidence = crop(confidence, box, size)
                    quality = (confidence >= self.conf_threshold).float().mean()
                probs = None if probs is None else crop(probs, box, size)
        return PseudoLabels(images, labels, confidence, quality, probs)

    def _labels_of(self, logits: torch.Tensor, size, keep_probs: bool, need_confidence: bool = True):
        logits = self.prior_corrected(self.upsample(logits.detach().float(), size))  # once: labels, confidence, probs
        if not (need_confidence or keep_probs):  # argmax of the logits = argmax of the probabilities
            return logits.argmax(dim=1), None, None, None
        labels, confidence, quality = pseudo_labels_from_logits(logits, conf_threshold=self.conf_threshold)
        probs = logits.softmax(dim=1) if keep_probs else None
        return labels, confidence, quality, probs
