"""DACS-style strong augmentation on normalised image batches, on any device (§4.4).

Colour jitter follows kornia 0.5's ColorJitter: per image, brightness is an additive shift of
(factor − 1), contrast a multiplicative factor, saturation scales HSV saturation, hue rotates HSV hue
by a fraction of a turn; each step clamps to [0, 1]; the four steps run in a random order drawn per
call. Gaussian blur uses one σ per call, an odd kernel of about 10 % of each side and reflect padding.

All randomness comes from one generator, which should be a CPU `torch.Generator` (or None for the
global CPU RNG): the apply/skip decisions and the op order are host-side choices, and the few per-image
factors are copied to the data device without blocking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._rng import to_device

__all__ = ["AugParams", "StrongAugment", "color_jitter", "gaussian_blur", "blur_kernel_size"]

_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class AugParams:
    """The per-iteration decisions shared by every stream (DACS: one draw per iteration)."""

    jitter: bool
    blur: bool


class StrongAugment:
    """Colour jitter (probability `jitter_p`) then Gaussian blur (probability `blur_p`)."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        jitter_strength: float = 0.2,
        jitter_p: float = 0.8,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.15, 1.15),
        kernel_frac: float = 0.1,
        hue_strength: float | None = None,
    ) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.jitter_strength = jitter_strength
        self.jitter_p = jitter_p
        self.blur_p = blur_p
        self.blur_sigma = blur_sigma
        self.kernel_frac = kernel_frac
        # [I] the hue range on its own (None: jitter_strength, as DACS/kornia); 0 keeps every hue
        self.hue_strength = jitter_strength if hue_strength is None else hue_strength
        # per-image factors = low + U(0, 1) · span: brightness, contrast, saturation in [1 − s, 1 + s], hue [−h, h]
        s, h = jitter_strength, self.hue_strength
        self._factor_span = torch.tensor([2 * s, 2 * s, 2 * s, 2 * h])
        self._factor_low = torch.tensor([1 - s, 1 - s, 1 - s, -h])

    def draw(self, generator: torch.Generator | None = None) -> AugParams:
        """Draw u, v ~ U(0, 1) (in that order): jitter if u > 1 − jitter_p, blur if v > 1 − blur_p."""
        u, v = torch.rand(2, generator=generator).tolist()
        return AugParams(jitter=u > 1.0 - self.jitter_p, blur=v > 1.0 - self.blur_p)

    def apply(
        self, images: torch.Tensor, params: AugParams, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Augment normalised images (B, 3, H, W) with the decisions in `params`; factors and σ are redrawn.

        Returns `images` itself when both steps are skipped; otherwise a new tensor of the same dtype.
        """
        if not (params.jitter or params.blur):
            return images
        out = images.float()
        if params.jitter:
            batch = images.shape[0]
            factors = torch.rand(batch, 4, generator=generator) * self._factor_span + self._factor_low
            order = torch.randperm(4, generator=generator).tolist()
            # One small host-to-device copy of factors, mean and std.
            packed = to_device(
                torch.cat((factors.flatten(), torch.tensor(self.mean + self.std))), images.device
            )
            factors = packed[: 4 * batch].view(batch, 4)
            mean, std = packed[4 * batch :].view(2, 1, 3, 1, 1).unbind(0)
            unit = (out * std + mean) / 255.0
            unit = color_jitter(unit, factors[:, 0], factors[:, 1], factors[:, 2], factors[:, 3], order)
            out = (unit * 255.0 - mean) / std
        if params.blur:
            low, high = self.blur_sigma
            sigma = (
                low + (high - low) * torch.rand(1, generator=generator).item()
            )  # a CPU draw: no device sync
            out = gaussian_blur(out, sigma, kernel_frac=self.kernel_frac)
        return out.to(images.dtype)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw decisions and apply them to one batch (when there is a single stream)."""
        return self.apply(images, self.draw(generator), generator)


def color_jitter(
    images: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
    order: Sequence[int] = (0, 1, 2, 3),
) -> torch.Tensor:
    """kornia-0.5 jitter of [0, 1] RGB images (B, 3, H, W) with per-image factors of shape (B,).

    `order` lists the steps by index: 0 brightness (add factor − 1), 1 contrast (multiply),
    2 saturation (scale HSV S), 3 hue (rotate HSV H by `hue` turns).
    """
    view = (-1, 1, 1, 1)
    steps = {
        0: lambda x: (x + (brightness.view(view) - 1.0)).clamp(0.0, 1.0),
        1: lambda x: (x * contrast.view(view)).clamp(0.0, 1.0),
        2: lambda x: _adjust_saturation(x, saturation.view(view)),
        3: lambda x: _adjust_hue(x, hue.view(view)),
    }
    for index in order:
        images = steps[index](images)
    return images


def blur_kernel_size(side: int, kernel_frac: float = 0.1) -> int:
    """Odd kernel near `kernel_frac` of a side (DACS): ceil(frac·side), minus 1 if even; 63 for 640."""
    size = math.ceil(kernel_frac * side)
    return max(size - (1 - size % 2), 1)


def gaussian_blur(images: torch.Tensor, sigma: float, kernel_frac: float = 0.1) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding and kernels from `blur_kernel_size`."""
    channels, height, width = images.shape[1:]
    size_y, size_x = blur_kernel_size(height, kernel_frac), blur_kernel_size(width, kernel_frac)
    kernel_y = _gaussian_window(size_y, sigma, images).view(1, 1, size_y, 1).expand(channels, 1, size_y, 1)
    kernel_x = _gaussian_window(size_x, sigma, images).view(1, 1, 1, size_x).expand(channels, 1, 1, size_x)
    padded = F.pad(images, (size_x // 2, size_x // 2, size_y // 2, size_y // 2), mode="reflect")
    out = F.conv2d(padded, kernel_y, groups=channels)
    return F.conv2d(out, kernel_x, groups=channels)


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    offsets = torch.arange(size, device=like.device, dtype=like.dtype) - size // 2
    window = torch.exp(-offsets.pow(2) / (2.0 * sigma * sigma))
    return window / window.sum()


def rgb_to_hsv(images: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """[0, 1] RGB (B, 3, H, W) → HSV with hue in radians [0, 2π), saturation and value in [0, 1]."""
    red, green, blue = images.unbind(1)
    value, argmax = images.max(1)
    delta = value - images.min(1).values
    saturation = delta / (value + eps)
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue_red = ((green - blue) / safe) % 6.0
    hue_green = (blue - red) / safe + 2.0
    hue_blue = (red - green) / safe + 4.0
    hue = torch.stack((hue_red, hue_green, hue_blue), 1).gather(1, argmax.unsqueeze(1)).squeeze(1)
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue)) * (_TWO_PI / 6.0)
    return torch.stack((hue, saturation, value), 1)


def hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv`."""
    hue, saturation, value = images.unbind(1)
    # Standard hexcone formula: channel n gets v − v·s·clamp(min(k, 4 − k), 0, 1), k = (n + 6h/2π) mod 6.
    sector = hue * (6.0 / _TWO_PI)
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (n + sector) % 6.0
        channels.append(value - value * saturation * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, 1)


def _adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    hsv = rgb_to_hsv(images)
    hue, saturation, value = hsv.unbind(1)
    saturation = (saturation * factor.squeeze(1)).clamp(0.0, 1.0)
    return hsv_to_rgb(torch.stack((hue, saturation, value), 1))


def _adjust_hue(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    hsv = rgb_to_hsv(images)
    hue, saturation, value = hsv.unbind(1)
    hue = torch.remainder(hue + turns.squeeze(1) * _TWO_PI, _TWO_PI)
    return hsv_to_rgb(torch.stack((hue, saturation, value), 1))
