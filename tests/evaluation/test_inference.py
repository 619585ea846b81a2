"""The evaluation's numbers (spec §11): sliding windows, flip averaging and the ACDC class prior, each against a
computation written out here on a tiny deterministic network."""

import pytest
import torch
import torch.nn.functional as F

from atp.evaluation.inference import acdc_class_prior_weights, segment, segment_probs

C = 19


class TinyNet(torch.nn.Module):
    """Logits at 1/4 of the input (like the Segmentor) from a strided conv plus a term of the input's mean colour,
    so a window's logits depend on the whole window (slide ≠ crops of one whole-image pass) and the network is
    not mirror-symmetric (flip ≠ identity)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, C, kernel_size=4, stride=4)
        self.mix = torch.nn.Linear(3, C)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.mix(x.mean(dim=(2, 3)))[:, :, None, None]


@pytest.fixture
def net() -> TinyNet:
    return TinyNet().eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(1))


def up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def hand_slide_logits(net, img, crop, stride) -> torch.Tensor:
    """mmseg 0.16 ``slide_inference`` as written there: the window grid, the windows clamped to the image, each
    window's logits resized to the window, summed and divided by the number of windows over each pixel."""
    _, _, h_img, w_img = img.shape
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    total = torch.zeros(img.shape[0], C, h_img, w_img)
    count = torch.zeros(1, 1, h_img, w_img)
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2, x2 = min(h_idx * h_stride + h_crop, h_img), min(w_idx * w_stride + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            window = img[:, :, y1:y2, x1:x2]
            total[:, :, y1:y2, x1:x2] += up(net(window), window.shape[-2:])
            count[:, :, y1:y2, x1:x2] += 1
    assert (count > 0).all()
    return total / count


@torch.no_grad()
@pytest.mark.parametrize(("crop", "stride"), [((16, 16), (6, 10)), ((32, 64), (8, 8))],
                         ids=["clamped-last-window", "crop-larger-than-image"])
def test_slide_averages_window_logits_like_mmseg(net, images, crop, stride):
    out_size = (30, 50)
    expected = up(hand_slide_logits(net, images, crop, stride), out_size).softmax(dim=1)
    probs = segment_probs(net, images, out_size, mode="slide", crop_size=crop, stride=stride)
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)
    labels = segment(net, images, out_size, mode="slide", crop_size=crop, stride=stride)
    assert torch.equal(labels, expected.argmax(dim=1))
    whole = up(net(images), out_size).softmax(dim=1)
    assert not torch.allclose(probs, whole, atol=1e-3)  # the windows matter: slide is not the whole pass


@torch.no_grad()
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_flip_averages_probabilities_with_the_unflipped_prediction_of_the_mirror(net, images, mode):
    """mmseg's ``aug_test`` with flip: the mean of the softmax outputs, the mirrored one flipped back."""
    out_size, crop, stride = (30, 50), (16, 16), (6, 10)

    def logits(x):
        return net(x) if mode == "whole" else hand_slide_logits(net, x, crop, stride)

    plain = up(logits(images), out_size).softmax(dim=1)
    mirrored = up(logits(images.flip(-1)), out_size).softmax(dim=1).flip(-1)
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # the network is not mirror-symmetric
    expected = 0.5 * (plain + mirrored)
    options = {"mode": mode, "crop_size": crop, "stride": stride, "flip": True}
    torch.testing.assert_close(segment_probs(net, images, out_size, **options), expected, rtol=0, atol=1e-6)
    assert torch.equal(segment(net, images, out_size, **options), expected.argmax(dim=1))


def _spec_prior_labels(net, images, out_size, weights):
    """Spec §11 (DANNet prior, released code): softmax at the resized (input) resolution, times the weights,
    then upsampled to the original resolution and arg-maxed."""
    probs = up(net(images), images.shape[-2:]).softmax(dim=1) * weights.view(1, -1, 1, 1)
    probs = up(probs, out_size)
    return probs, probs.argmax(dim=1)


@torch.no_grad()
def test_acdc_prior_at_the_resized_resolution_then_upsampled_as_spec_11(net, images):
    out_size, weights = (30, 50), acdc_class_prior_weights()
    probs, labels = _spec_prior_labels(net, images, out_size, weights)
    assert torch.equal(segment(net, images, out_size, class_prior=weights), labels)
    torch.testing.assert_close(segment_probs(net, images, out_size, class_prior=weights), probs, rtol=0, atol=1e-6)
    assert not torch.equal(labels, segment(net, images, out_size))  # the prior changes some labels here
    # the other order (softmax at the output size, then the weights) differs on this input
    other = (up(net(images), out_size).softmax(dim=1) * weights.view(1, -1, 1, 1)).argmax(dim=1)
    assert not torch.equal(labels, other)
