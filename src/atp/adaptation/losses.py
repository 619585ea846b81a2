"""Loss terms of the three ATP stages (§5.2, §6.2, §8.2, §8.4) and of the baselines, on plain tensors.

Every loss works in float32 (logits are up-cast, which keeps mixed precision safe) and reduces with
device-side arithmetic only, so none of them forces a host synchronisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "normalized_entropy",
    "curriculum_entropy_loss",
    "diversity_loss",
    "entropy_loss",
    "marginal_entropy",
    "information_maximization_loss",
    "negative_pseudo_label_loss",
    "mean_negative_classes",
    "pseudo_label_ce",
    "pseudo_label_ce_and_negative",
    "thresholded_pseudo_label_ce",
    "prototype_contrastive_loss",
]

# The released code adds 1e-30 inside log(m); m is a weighted mean of softmax values, so this only
# guards against underflow.
_LOG_EPS = 1e-30


def normalized_entropy(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Per-pixel entropy of softmax(logits) divided by log C, in [0, 1]; `dim` is removed."""
    log_probs = F.log_softmax(logits.float(), dim=dim)
    return -(log_probs.exp() * log_probs).sum(dim) / math.log(logits.shape[dim])


def curriculum_entropy_loss(logits: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """L_cel: mean over pixels of (1 − H)^γ · H, H the normalised entropy (§5.2), logits (B, C, H, W)."""
    entropy = normalized_entropy(logits)
    return ((1.0 - entropy).pow(gamma) * entropy).mean()


def diversity_loss(logits: torch.Tensor, alpha: float = 3.0, bug_compat: bool = False,
                   prior: torch.Tensor | None = None) -> torch.Tensor:
    """L_div = −Ĥ(m), m_c = (1/N) Σ_i w_i p_ic with detached w_i = exp(−α H_i) (§5.2); m is not renormalised.

    `bug_compat=True` computes the variant described in spec §5.2 / #4: p permuted to (B, H, W, C) and
    read as C rows of N values, weights flattened in (H, W, B) order, so m_c mixes classes and pixels.
    (The released code's three transposes actually give (C, H, W, B), which equals the default.)
    `prior` ([I], a (C,) class share): the term pulls m toward it instead of toward uniform,
    KL(m̂ ‖ prior) / log C with m̂ = m / Σ_c m_c (a uniform prior gives 1 − Ĥ(m̂)); shares below 1e-6
    count as 1e-6, so a class the source never shows is pushed down, not to an infinite loss.
    """
    log_probs = F.log_softmax(logits.float(), dim=1)
    probs = log_probs.exp()
    batch, num_classes, height, width = probs.shape
    num_pixels = batch * height * width
    entropy = -(probs * log_probs).sum(1) / math.log(num_classes)
    weights = torch.exp(-alpha * entropy).detach()
    if bug_compat:
        rows = probs.permute(0, 2, 3, 1).reshape(num_classes, num_pixels)
        flat_weights = weights.permute(1, 2, 0).reshape(num_pixels)
        class_mass = (rows * flat_weights).sum(1) / num_pixels
    else:
        class_mass = (probs * weights.unsqueeze(1)).sum((0, 2, 3)) / num_pixels
    if prior is not None:
        share = class_mass / class_mass.sum()
        target = prior.float().clamp_min(1e-6)
        target = target / target.sum()
        return (share * (torch.log(share + _LOG_EPS) - torch.log(target))).sum() / math.log(num_classes)
    mass_entropy = -(class_mass * torch.log(class_mass + _LOG_EPS)).sum() / math.log(num_classes)
    return -mass_entropy


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """TENT's loss: the mean over pixels of the Shannon entropy −Σ_c p_c log p_c (nats, not normalised),
    p = softmax over dim 1 of logits (B, C, ...)."""
    log_probs = F.log_softmax(logits.float(), dim=1)
    return -(log_probs.exp() * log_probs).sum(1).mean()


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the mean prediction m̄ = mean of softmax(logits) over every pixel of the whole batch.

    SHOT's diversity term ``gent`` (its ``msoftmax`` is the mean over the batch; here over batch and pixels).
    """
    probs = F.softmax(logits.float(), dim=1)
    mean_probs = probs.mean(dim=[d for d in range(probs.dim()) if d != 1])
    return -(mean_probs * torch.log(mean_probs + _LOG_EPS)).sum()


def information_maximization_loss(
    logits: torch.Tensor, div_weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SHOT-IM: (entropy_loss − div_weight · marginal_entropy, entropy_loss, marginal_entropy).

    Confident per-pixel predictions that are diverse over the batch; SHOT weighs both terms 1.
    """
    entropy = entropy_loss(logits)
    diversity = marginal_entropy(logits)
    return entropy - div_weight * diversity, entropy, diversity


def negative_pseudo_label_loss(
    probs: torch.Tensor,
    threshold: float = 0.04,
    mask_probs: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_npl: mean of −log clamp(1 − Σ_{c: q_ic < τ} p_ic, 1e-8, 1) (§6.2).

    probs: (B, C, H, W) softmax of the prediction being trained (gradients flow through it).
    mask_probs: q deciding the negative classes, detached; defaults to `probs` (the code's student mask).
    valid: optional (B, H, W) bool mask; when given the loss is averaged over valid pixels only.
    By default every pixel counts, ignored and padded ones included (code behaviour, #6).
    """
    probs = probs.float()
    reference = (probs if mask_probs is None else mask_probs).detach()
    negative = reference < threshold
    kept_mass = (1.0 - (probs * negative).sum(1)).clamp(1e-8, 1.0)
    per_pixel = -torch.log(kept_mass)
    if valid is None:
        return per_pixel.mean()
    valid = valid.to(per_pixel.dtype)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1.0)


def mean_negative_classes(probs: torch.Tensor, threshold: float = 0.04) -> torch.Tensor:
    """Mean number of classes per pixel with probability below `threshold` (for logging; a 0-d tensor)."""
    return (probs.detach() < threshold).sum(1).float().mean()


def pseudo_label_ce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Pixel CE with mmseg 0.16 mean reduction (#19).

    The sum of the (optionally weighted) per-pixel losses is divided by the number of ALL pixels:
    ignored pixels contribute 0 but still count in the denominator.
    """
    per_pixel = F.cross_entropy(logits.float(), labels.long(), reduction="none", ignore_index=ignore_index)
    if weights is not None:
        per_pixel = per_pixel * weights.float()
    return per_pixel.mean()


def thresholded_pseudo_label_ce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    confidence: torch.Tensor,
    threshold: float,
    ignore_index: int = 255,
) -> torch.Tensor:
    """:func:`pseudo_label_ce` of the pixels whose teacher confidence is at least ``threshold``.

    Less confident pixels are ignored, but, as in :func:`pseudo_label_ce`, still count in the denominator.
    """
    labels = labels.masked_fill(confidence < threshold, ignore_index)
    return pseudo_label_ce(logits, labels, ignore_index=ignore_index)


def pseudo_label_ce_and_negative(
    logits: torch.Tensor,
    labels: torch.Tensor,
    threshold: float = 0.04,
    weights: torch.Tensor | None = None,
    mask_probs: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pseudo_label_ce, negative_pseudo_label_loss, probs) from ONE log-softmax of `logits`.

    Same values as the two functions called separately, but the probabilities of the negative term
    are the exponent of the CE's log-probabilities instead of a second softmax over the logits.
    `probs` is returned (detached use only) for logging.
    """
    log_probs = logits.float().log_softmax(dim=1)
    per_pixel = F.nll_loss(log_probs, labels.long(), reduction="none", ignore_index=ignore_index)
    if weights is not None:
        per_pixel = per_pixel * weights.float()
    probs = log_probs.exp()
    negative = negative_pseudo_label_loss(probs, threshold=threshold, mask_probs=mask_probs)
    return per_pixel.mean(), negative, probs


def prototype_contrastive_loss(
    feats: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    temperature: float = 100.0,
    use_reg: bool = True,
    reg_weight: float = 1.0,
    ignore_index: int = 255,
) -> torch.Tensor:
    """L_scl (SePiCo ProtoCL, §8.4): CE of softmax_c(z·μ_c / τ) over valid pixels, plus the regulariser.

    feats: (B, D, h, w) unit-norm projections; labels: (B, h, w), already downscaled, `ignore_index`
    where invalid; prototypes: (C, D), treated as constants. The regulariser
    (1/(C log C)) Σ_c log softmax_c(z̄·μ_c / τ), z̄ the mean valid feature, is ADDED with `reg_weight`
    (SePiCo's sign). With no valid pixel the result is a zero that is still connected to `feats`.
    """
    num_classes, dim = prototypes.shape
    flat_feats = feats.float().permute(0, 2, 3, 1).reshape(-1, dim)
    flat_labels = labels.reshape(-1).long()
    valid = (flat_labels >= 0) & (flat_labels < num_classes)
    targets = torch.where(valid, flat_labels, torch.full_like(flat_labels, ignore_index))
    protos = prototypes.detach().float()

    logits = flat_feats @ protos.t() / temperature
    num_valid = valid.sum()
    denominator = num_valid.clamp_min(1).float()
    loss = F.cross_entropy(logits, targets, reduction="sum", ignore_index=ignore_index) / denominator
    if use_reg and reg_weight > 0:
        mean_feat = (flat_feats * valid.unsqueeze(1)).sum(0) / denominator
        log_probs = F.log_softmax(mean_feat @ protos.t() / temperature, dim=0)
        reg = log_probs.sum() / (num_classes * math.log(num_classes))
        loss = loss + reg_weight * reg * (num_valid > 0).float()
    return loss
