"""Whole-image and sliding-window inference shared by validation, evaluation and ranking (spec §11)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from atp.data.labels import acdc_class_prior_weights as _prior_weights_np

Model = Callable[[torch.Tensor], torch.Tensor]


def acdc_class_prior_weights(strength: float = 0.16) -> torch.Tensor:
    """DANNet test-time class weights (spec §11) as a float tensor."""
    return torch.from_numpy(_prior_weights_np(strength)).float()


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; any other name (``cpu``, ``cuda:1``) as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _slide_logits(model: Model, img: torch.Tensor, crop: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Average logits of overlapping crop windows, each upsampled to its window (mmseg 'slide')."""
    batch, _, height, width = img.shape
    crop_h, crop_w = min(crop[0], height), min(crop[1], width)
    stride_h, stride_w = stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    logits = None
    counts = img.new_zeros((1, 1, height, width))
    for row in range(rows):
        for col in range(cols):
            top = min(row * stride_h, height - crop_h)
            left = min(col * stride_w, width - crop_w)
            window = img[:, :, top : top + crop_h, left : left + crop_w]
            out = F.interpolate(model(window), size=(crop_h, crop_w), mode="bilinear", align_corners=False)
            if logits is None:
                logits = out.new_zeros((batch, out.shape[1], height, width))
            logits[:, :, top : top + crop_h, left : left + crop_w] += out
            counts[:, :, top : top + crop_h, left : left + crop_w] += 1
    return logits / counts


def segment_probs(
    model: Model,
    img: torch.Tensor,
    out_size: Sequence[int],
    mode: str = "whole",
    crop_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    flip: bool = False,
    class_prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class probabilities at ``out_size`` for a batch of normalised images.

    ``model`` maps images to logits at any resolution (a ``Segmentor`` gives 1/4). ``mode`` is
    ``whole`` (one pass over the resized image) or ``slide`` (windows of ``crop_size`` at ``stride``);
    ``flip`` averages with the mirrored pass; ``class_prior`` (C,) multiplies the probabilities at the
    input's (resized) resolution, which are then upsampled to ``out_size`` (spec §11, the DANNet prior).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"eval.mode must be 'whole' or 'slide', got {mode!r}")

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        if mode == "whole":
            return model(x)
        if crop_size is None or stride is None:
            raise ValueError("eval.mode=slide needs eval.crop_size and eval.stride")
        return _slide_logits(model, x, crop_size, stride)

    size = tuple(out_size) if class_prior is None else tuple(img.shape[-2:])

    def probs_of(x: torch.Tensor) -> torch.Tensor:
        logits = F.interpolate(logits_of(x).float(), size=size, mode="bilinear", align_corners=False)
        return logits.softmax(dim=1)

    probs = probs_of(img)
    if flip:
        probs = 0.5 * (probs + probs_of(img.flip(-1)).flip(-1))
    if class_prior is not None:
        probs = probs * class_prior.to(probs.device).view(1, -1, 1, 1)
        probs = F.interpolate(probs, size=tuple(out_size), mode="bilinear", align_corners=False)
    return probs


def segment(model: Model, img: torch.Tensor, out_size: Sequence[int], **kwargs) -> torch.Tensor:
    """Predicted train ids (B, H, W) at ``out_size``; see :func:`segment_probs` for the options."""
    if kwargs.get("mode", "whole") == "whole" and not kwargs.get("flip") and kwargs.get("class_prior") is None:
        # softmax does not change the argmax: skip it (and its full-resolution pass); float32 as segment_probs
        return F.interpolate(model(img).float(), size=tuple(out_size), mode="bilinear", align_corners=False).argmax(dim=1)
    return segment_probs(model, img, out_size, **kwargs).argmax(dim=1)
