"""Losses checked against hand computations with `math` on tiny inputs."""

import math

import pytest
import torch

from atp.adaptation import (
    curriculum_entropy_loss,
    diversity_loss,
    mean_negative_classes,
    negative_pseudo_label_loss,
    prototype_contrastive_loss,
    pseudo_label_ce,
    pseudo_label_ce_and_negative,
)


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def norm_entropy(probs):
    return -sum(p * math.log(p) for p in probs) / math.log(len(probs))


# Two pixels, three classes: logits[pixel][class].
PIXEL_LOGITS = [[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]]


def as_map(pixel_logits):
    """(1, C, 1, N) tensor from a list of per-pixel logits."""
    return torch.tensor(pixel_logits, dtype=torch.float64).t().reshape(1, len(pixel_logits[0]), 1, -1)


def test_curriculum_entropy_matches_hand_computation():
    entropies = [norm_entropy(softmax(px)) for px in PIXEL_LOGITS]
    expected = sum((1 - h) ** 5 * h for h in entropies) / 2
    assert curriculum_entropy_loss(as_map(PIXEL_LOGITS)).item() == pytest.approx(expected, rel=1e-6)
    assert curriculum_entropy_loss(as_map(PIXEL_LOGITS), gamma=0.0).item() == pytest.approx(
        sum(entropies) / 2, rel=1e-6
    )


def test_curriculum_entropy_is_zero_for_uniform_and_for_one_hot():
    assert curriculum_entropy_loss(torch.zeros(2, 4, 3, 3)).item() == pytest.approx(0.0, abs=1e-7)
    assert curriculum_entropy_loss(torch.tensor([100.0, 0, 0]).view(1, 3, 1, 1)).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_diversity_intended_matches_hand_computation():
    probs = [softmax(px) for px in PIXEL_LOGITS]
    weights = [math.exp(-3.0 * norm_entropy(p)) for p in probs]
    mass = [sum(w * p[c] for w, p in zip(weights, probs, strict=True)) / 2 for c in range(3)]
    expected = sum(m * math.log(m) for m in mass) / math.log(3)  # = −Ĥ(m)
    assert diversity_loss(as_map(PIXEL_LOGITS), alpha=3.0).item() == pytest.approx(expected, rel=1e-6)


def test_diversity_weights_are_detached():
    logits = as_map(PIXEL_LOGITS).requires_grad_()
    diversity_loss(logits).backward()
    # With detached weights the gradient equals that of −Ĥ(m) with w held fixed.
    fixed = as_map(PIXEL_LOGITS).requires_grad_()
    probs = fixed.softmax(1)
    entropy = -(probs * probs.log()).sum(1) / math.log(3)
    weights = torch.exp(-3 * entropy).detach()
    mass = (probs * weights.unsqueeze(1)).sum((0, 2, 3)) / 2
    (mass * mass.log()).sum().div(math.log(3)).backward()
    assert torch.allclose(logits.grad, fixed.grad)


def test_diversity_bug_compat_reproduces_the_described_reshape_and_differs():
    batch, height, width, classes = 2, 1, 2, 3
    torch.manual_seed(0)
    logits = torch.randn(batch, classes, height, width, dtype=torch.float64)
    num = batch * height * width
    prob = {}
    weight = {}
    for b in range(batch):
        for h in range(height):
            for w in range(width):
                p = softmax(logits[b, :, h, w].tolist())
                for c in range(classes):
                    prob[b, h, w, c] = p[c]
                weight[b, h, w] = math.exp(-3.0 * norm_entropy(p))
    # (B, H, W, C) memory read as `classes` rows of `num` values; weights in (H, W, B) order.
    flat_probs = [
        prob[b, h, w, c]
        for b in range(batch)
        for h in range(height)
        for w in range(width)
        for c in range(classes)
    ]
    flat_weights = [weight[b, h, w] for h in range(height) for w in range(width) for b in range(batch)]
    mass = [
        sum(flat_probs[row * num + j] * flat_weights[j] for j in range(num)) / num for row in range(classes)
    ]
    expected = sum(m * math.log(m) for m in mass) / math.log(classes)
    buggy = diversity_loss(logits, bug_compat=True).item()
    assert buggy == pytest.approx(expected, rel=1e-6)
    assert abs(buggy - diversity_loss(logits).item()) > 1e-4


def test_diversity_default_is_the_released_transpose_layout():
    """The released EntropyLoss's lines (yxiwang/ATP, mmseg/models/losses/cross_entropy_loss.py), run literally:
    p (B, C, H, W) → (C, H, W, B) by three transposes, read as (C, N); w (B, H, W) → (H, W, B), flattened;
    m_c = Σ w p / N. Its −Ĥ(m) is the default diversity term (spec §5.2, §14 #4); ``bug_compat`` is not."""
    logits = torch.randn(2, 3, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(logits, dim=1)
    n, c, h, w = p.shape
    entropy = -torch.sum(torch.mul(p, torch.log(p + 1e-30)), dim=1) / math.log(c)
    weight = torch.exp(-3.0 * entropy)
    p = p.transpose(0, 1).transpose(1, 2).transpose(2, 3)
    assert p.shape == (c, h, w, n)
    m_p = p.reshape(c, h * w * n)
    weight = weight.transpose(0, 1).transpose(1, 2)
    weight = weight.reshape(h * w * n)
    m_p = torch.sum(weight.detach() * m_p, dim=1) / (h * w * n)
    gentropy = torch.sum(torch.mul(-m_p, torch.log(m_p + 1e-30))) / math.log(c)

    released = -gentropy.item()  # the loss computes in float32
    assert diversity_loss(logits, alpha=3.0, bug_compat=False).item() == pytest.approx(released, rel=1e-6)
    assert abs(diversity_loss(logits, alpha=3.0, bug_compat=True).item() - released) > 1e-4


def test_negative_loss_threshold_behaviour():
    probs = torch.tensor([0.90, 0.07, 0.03]).view(1, 3, 1, 1)
    assert negative_pseudo_label_loss(probs, 0.04).item() == pytest.approx(-math.log(0.97), rel=1e-5)
    assert negative_pseudo_label_loss(probs, 0.08).item() == pytest.approx(-math.log(0.90), rel=1e-5)
    assert negative_pseudo_label_loss(probs, 0.01).item() == pytest.approx(0.0, abs=1e-7)
    assert mean_negative_classes(probs, 0.04).item() == 1.0
    assert mean_negative_classes(probs, 0.08).item() == 2.0


def test_negative_loss_uses_mask_probs_and_valid():
    probs = torch.tensor([[0.90, 0.07, 0.03], [0.2, 0.5, 0.3]]).t().reshape(1, 3, 1, 2).requires_grad_()
    teacher = torch.tensor([[0.02, 0.50, 0.48], [0.2, 0.5, 0.3]]).t().reshape(1, 3, 1, 2).requires_grad_()
    loss = negative_pseudo_label_loss(probs, 0.04, mask_probs=teacher)
    assert loss.item() == pytest.approx(-math.log(0.10) / 2, rel=1e-5)
    loss.backward()
    assert teacher.grad is None and probs.grad is not None
    valid = torch.tensor([[[True, False]]])
    assert negative_pseudo_label_loss(probs, 0.04, mask_probs=teacher, valid=valid).item() == pytest.approx(
        -math.log(0.10), rel=1e-5
    )


def test_negative_loss_clamps_to_log_1e8():
    probs = torch.tensor([0.02, 0.02, 0.96]).view(1, 3, 1, 1)
    mask = torch.tensor([0.0, 0.0, 0.0]).view(1, 3, 1, 1)  # every class negative: 1 − Σp = 0
    assert negative_pseudo_label_loss(probs, 0.04, mask_probs=mask).item() == pytest.approx(
        -math.log(1e-8), rel=1e-4
    )


def test_pseudo_label_ce_counts_ignored_pixels_in_denominator():
    pixels = [[1.0, 0.0, -1.0], [0.2, 0.1, 0.9], [3.0, 0.0, 0.0], [0.0, 2.0, 0.5]]
    labels = torch.tensor([0, 2, 255, 1]).view(1, 1, 4)
    weights = torch.tensor([1.0, 0.5, 1.0, 0.0]).view(1, 1, 4)
    ce = [-math.log(softmax(px)[lab]) for px, lab in zip(pixels, [0, 2, 0, 1], strict=True)]
    logits = as_map(pixels)
    assert pseudo_label_ce(logits, labels).item() == pytest.approx((ce[0] + ce[1] + ce[3]) / 4, rel=1e-6)
    assert pseudo_label_ce(logits, labels, weights).item() == pytest.approx(
        (ce[0] + 0.5 * ce[1]) / 4, rel=1e-6
    )


def unit(vector):
    n = math.sqrt(sum(v * v for v in vector))
    return [v / n for v in vector]


@pytest.mark.parametrize("temperature", [1.0, 100.0])
def test_prototype_contrastive_loss_with_regulariser(temperature):
    feats = [unit([1.0, 0.2]), unit([0.3, 0.9]), unit([0.5, 0.5])]
    labels = [0, 255, 2]
    protos = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.6]]

    def class_logits(z):
        return [sum(a * b for a, b in zip(z, mu, strict=True)) / temperature for mu in protos]

    valid = [(z, y) for z, y in zip(feats, labels, strict=True) if y != 255]
    proto_ce = sum(-math.log(softmax(class_logits(z))[y]) for z, y in valid) / len(valid)
    mean_feat = [sum(z[d] for z, _ in valid) / len(valid) for d in range(2)]
    reg = sum(math.log(p) for p in softmax(class_logits(mean_feat))) / (3 * math.log(3))

    feat_map = torch.tensor(feats, dtype=torch.float64).t().reshape(1, 2, 1, 3).requires_grad_()
    label_map = torch.tensor(labels).view(1, 1, 3)
    prototypes = torch.tensor(protos, dtype=torch.float64)
    no_reg = prototype_contrastive_loss(feat_map, label_map, prototypes, temperature, use_reg=False)
    assert no_reg.item() == pytest.approx(proto_ce, rel=1e-6)
    with_reg = prototype_contrastive_loss(feat_map, label_map, prototypes, temperature, reg_weight=0.5)
    assert with_reg.item() == pytest.approx(proto_ce + 0.5 * reg, rel=1e-6)
    with_reg.backward()
    assert feat_map.grad[0, :, 0, 1].abs().sum() == 0  # the ignored pixel gets no gradient


def test_prototype_contrastive_loss_without_valid_pixels_is_a_connected_zero():
    feats = torch.nn.functional.normalize(torch.rand(2, 4, 3, 3), dim=1).requires_grad_()
    labels = torch.full((2, 3, 3), 255)
    loss = prototype_contrastive_loss(feats, labels, torch.rand(5, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert feats.grad is not None and feats.grad.abs().sum() == 0


@pytest.mark.parametrize("with_weights", [False, True])
def test_fused_ce_and_negative_equals_the_separate_losses_and_their_gradients(with_weights):
    generator = torch.Generator().manual_seed(5)
    logits = (3 * torch.randn(2, 6, 5, 4, generator=generator)).requires_grad_()
    labels = torch.randint(0, 6, (2, 5, 4), generator=generator)
    labels[0, 0, :2] = 255
    weights = torch.rand(2, 5, 4, generator=generator) if with_weights else None

    positive, negative, probs = pseudo_label_ce_and_negative(logits, labels, threshold=0.04, weights=weights)
    (fused_grad,) = torch.autograd.grad(positive + 0.5 * negative, logits)
    expected_pos = pseudo_label_ce(logits, labels, weights=weights)
    expected_neg = negative_pseudo_label_loss(logits.softmax(dim=1), threshold=0.04)
    (expected_grad,) = torch.autograd.grad(expected_pos + 0.5 * expected_neg, logits)

    assert negative.item() > 0  # some classes are below 0.04 with logits of scale 3
    assert positive.item() == pytest.approx(expected_pos.item(), rel=1e-6)
    assert negative.item() == pytest.approx(expected_neg.item(), rel=1e-5)
    torch.testing.assert_close(probs, logits.softmax(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_diversity_toward_a_prior_is_the_kl_of_the_normalised_marginal():
    probs = [softmax(px) for px in PIXEL_LOGITS]
    weights = [math.exp(-3.0 * norm_entropy(p)) for p in probs]
    mass = [sum(w * p[c] for w, p in zip(weights, probs, strict=True)) / 2 for c in range(3)]
    share = [m / sum(mass) for m in mass]
    prior = [0.5, 0.3, 0.2]
    expected = sum(s * math.log(s / q) for s, q in zip(share, prior, strict=True)) / math.log(3)
    got = diversity_loss(as_map(PIXEL_LOGITS), alpha=3.0, prior=torch.tensor(prior, dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # a uniform prior: 1 − Ĥ(m̂), the paper's term up to the normalisation of m
    uniform = diversity_loss(as_map(PIXEL_LOGITS), alpha=3.0, prior=torch.full((3,), 1 / 3, dtype=torch.float64))
    assert uniform.item() == pytest.approx(1 + sum(s * math.log(s) for s in share) / math.log(3), rel=1e-6)
