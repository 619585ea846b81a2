"""On-device DACS strong augmentation."""

import pytest
import torch

from atp.adaptation import AugParams, StrongAugment, blur_kernel_size, color_jitter, gaussian_blur
from atp.adaptation.augment import hsv_to_rgb, rgb_to_hsv

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def normalised_batch(seed=0, size=(2, 3, 20, 24)):
    images = torch.rand(size, generator=torch.Generator().manual_seed(seed)) * 255
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_skip_is_identity_and_shape_dtype_device_preserved():
    aug = StrongAugment(MEAN, STD)
    x = normalised_batch()
    assert aug.apply(x, AugParams(jitter=False, blur=False)) is x
    for params in (AugParams(True, False), AugParams(False, True), AugParams(True, True)):
        y = aug.apply(x, params, torch.Generator().manual_seed(0))
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert not torch.equal(y, x)
    half = aug.apply(x.double(), AugParams(True, True), torch.Generator().manual_seed(0))
    assert half.dtype == torch.float64


def test_deterministic_given_generator_and_draw_probabilities():
    aug = StrongAugment(MEAN, STD)
    x = normalised_batch()
    runs = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(5)
        params = aug.draw(gen)
        runs.append((params, aug.apply(x, AugParams(True, True), gen)))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])

    gen = torch.Generator().manual_seed(0)
    draws = [aug.draw(gen) for _ in range(2000)]
    assert sum(d.jitter for d in draws) / 2000 == pytest.approx(0.8, abs=0.04)
    assert sum(d.blur for d in draws) / 2000 == pytest.approx(0.5, abs=0.04)


def test_color_jitter_semantics():
    x = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    ones, zeros = torch.ones(2), torch.zeros(2)
    brightness = torch.tensor([1.2, 0.9])
    assert torch.allclose(
        color_jitter(x, brightness, ones, ones, zeros),
        (x + (brightness - 1).view(-1, 1, 1, 1)).clamp(0, 1),
        atol=1e-6,
    )
    contrast = torch.tensor([0.8, 1.1])
    assert torch.allclose(
        color_jitter(x, ones, contrast, ones, zeros), (x * contrast.view(-1, 1, 1, 1)).clamp(0, 1), atol=1e-6
    )
    assert torch.allclose(color_jitter(x, ones, ones, ones, zeros), x, atol=1e-5)
    gray = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    assert torch.allclose(
        color_jitter(gray, ones, ones, torch.tensor([1.2, 0.8]), torch.tensor([0.2, -0.2])), gray, atol=1e-5
    )  # saturation and hue leave gray pixels alone
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    third_turn = color_jitter(red, torch.ones(1), torch.ones(1), torch.ones(1), torch.tensor([1 / 3]))
    assert torch.allclose(third_turn.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)  # red → green
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)


def test_gaussian_blur_kernel_and_behaviour():
    assert blur_kernel_size(640) == 63 and blur_kernel_size(720) == 71 and blur_kernel_size(650) == 65
    constant = torch.full((1, 3, 30, 40), 0.3)
    assert torch.allclose(gaussian_blur(constant, 1.0), constant, atol=1e-6)
    impulse = torch.zeros(1, 1, 30, 30)
    impulse[0, 0, 15, 15] = 1.0
    blurred = gaussian_blur(impulse, 0.8)
    assert blurred.sum().item() == pytest.approx(1.0, rel=1e-5)
    assert blurred[0, 0, 15, 15] < 1 and torch.allclose(blurred, blurred.flip(-1).roll(1, -1))


def test_hue_strength_zero_keeps_every_hue_and_the_other_factors():
    # unit values in [0.4, 0.6]: brightness ±0.2, contrast and saturation ×[0.8, 1.2] never clip, so only
    # the hue step can move a pixel's hue
    unit = 0.4 + 0.2 * torch.rand(4, 3, 12, 16, generator=torch.Generator().manual_seed(3))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    images = (unit * 255 - mean) / std

    def hue_and_saturation(normalised):
        hsv = rgb_to_hsv((normalised * std + mean) / 255)
        return hsv[:, 0], hsv[:, 1]

    def jittered(**kwargs):
        aug = StrongAugment(MEAN, STD, jitter_strength=0.2, blur_p=0.0, **kwargs)
        return aug.apply(images, AugParams(jitter=True, blur=False), torch.Generator().manual_seed(9))

    hue, saturation = hue_and_saturation(images)
    coloured = saturation > 0.05  # hue is ill-defined on grey pixels

    def hue_change(augmented):  # radians, absolute, the short way round
        return (torch.remainder(hue_and_saturation(augmented)[0] - hue + torch.pi, 2 * torch.pi) - torch.pi).abs()

    kept, turned = jittered(hue_strength=0.0), jittered()
    assert hue_change(kept)[coloured].max() < 1e-3
    turned_change = hue_change(turned)
    turned_by = torch.stack([turned_change[i][coloured[i]].median() for i in range(4)])
    assert (turned_by > 0.01).all() and turned_by.max() > 0.5  # every image turned, one by over 0.5 rad
    assert not torch.allclose(kept, images, atol=1e-2)  # brightness, contrast, saturation still applied
