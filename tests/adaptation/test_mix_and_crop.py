"""ClassMix, class-balanced crop and teacher pseudo-labels."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from atp.adaptation import (
    class_balanced_crop_box,
    class_balanced_pseudo_labels,
    class_quantile_thresholds,
    classmix_masks,
    crop,
    mix,
    mixed_targets,
    pseudo_labels_from_logits,
    row_ignore_weights,
    threshold_pseudo_labels,
)


def two_images():
    labels = torch.full((2, 4, 4), 5)
    labels[0] = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 255]])
    return labels


def selected_classes(mask, labels):
    """Classes fully covered by the mask; asserts the mask never splits a class."""
    chosen = set()
    for cls in labels.unique().tolist():
        inside = mask[labels == cls]
        assert inside.all() or not inside.any()
        if inside.all():
            chosen.add(cls)
    return chosen


def test_classmix_per_image_picks_half_of_own_classes():
    labels = two_images()
    for seed in range(10):
        masks = classmix_masks(labels, batch_union=False, generator=torch.Generator().manual_seed(seed))
        assert masks.dtype == torch.bool and masks.shape == labels.shape
        chosen0 = selected_classes(masks[0], labels[0])
        assert len(chosen0) == 2 and chosen0 <= {0, 1, 2, 3}  # ⌈4/2⌉, 255 never chosen
        assert masks[1].all()  # ⌈1/2⌉ = 1 of its single class


def test_classmix_batch_union_draws_from_all_classes_of_the_batch():
    labels = two_images()
    picked_absent = False
    for seed in range(20):
        masks = classmix_masks(labels, batch_union=True, generator=torch.Generator().manual_seed(seed))
        chosen0 = selected_classes(masks[0], labels[0])
        # 3 of the union {0,1,2,3,5}; image 0 sees those among its own classes.
        assert len(chosen0) in (2, 3) and 255 not in chosen0
        picked_absent |= len(chosen0) == 2  # then class 5 (absent from image 0) was drawn for it
        assert masks[1].all() or not masks[1].any()
    assert picked_absent


def test_classmix_is_deterministic_given_generator():
    labels = torch.randint(0, 19, (2, 16, 16))
    a = classmix_masks(labels, generator=torch.Generator().manual_seed(3))
    b = classmix_masks(labels, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_mix_and_mixed_targets():
    mask = torch.tensor([[[True, False], [False, True]]])
    easy_img, hard_img = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    mixed = mix(mask, easy_img, hard_img)
    assert torch.equal(mixed, mask.unsqueeze(1).expand(1, 3, 2, 2).float())
    labels, weights = mixed_targets(
        mask, torch.full((1, 2, 2), 7), torch.full((1, 2, 2), 3), torch.full((1, 2, 2), 0.4)
    )
    assert labels.tolist() == [[[7, 3], [3, 7]]]
    assert torch.allclose(weights, torch.tensor([[[1.0, 0.4], [0.4, 1.0]]]))


def test_row_ignore_weights():
    weights = row_ignore_weights(torch.tensor(0.25), (2, 10, 3), top=2, bottom=3)
    assert weights.shape == (2, 10, 3)
    assert torch.all(weights[:, :2] == 0) and torch.all(weights[:, 7:] == 0)
    assert torch.all(weights[:, 2:7] == 0.25)
    per_image = row_ignore_weights(torch.tensor([0.1, 0.9]), (2, 4, 1), top=0, bottom=0)
    assert torch.allclose(per_image[:, :, 0], torch.tensor([[0.1] * 4, [0.9] * 4]))


def hand_score(patch, cat_max_ratio=0.75):
    counts = Counter(v for v in patch.flatten().tolist() if v != 255)
    if len(counts) < 2 or max(counts.values()) / sum(counts.values()) >= cat_max_ratio:
        return 0.0
    return sum(math.log(c) for c in counts.values() if c > 1)


def test_class_balanced_crop_picks_the_best_scored_box():
    torch.manual_seed(0)
    labels = torch.zeros(2, 12, 14, dtype=torch.long)
    labels[:, :, 7:] = 1
    labels[0, 8:, :4] = 2
    labels[1, :3] = 255
    labels[1, 5:9, 2:6] = torch.randint(0, 4, (4, 4))
    size, tries, seed = (5, 6), 10, 11
    top, left = class_balanced_crop_box(labels, size, tries, generator=torch.Generator().manual_seed(seed))

    replay = torch.Generator().manual_seed(seed)
    tops = torch.randint(0, 12 - 5 + 1, (2, tries), generator=replay)
    lefts = torch.randint(0, 14 - 6 + 1, (2, tries), generator=replay)
    winners = []
    for b in range(2):
        scores = [
            hand_score(labels[b, t : t + 5, x : x + 6])
            for t, x in zip(tops[b].tolist(), lefts[b].tolist(), strict=True)
        ]
        best = scores.index(max(scores))
        winners.append(best)
        assert (top[b].item(), left[b].item()) == (tops[b, best].item(), lefts[b, best].item())
    assert any(w > 0 for w in winners)  # the example exercises a non-first box

    cropped = crop(labels, (top, left), size)
    for b in range(2):
        assert torch.equal(cropped[b], labels[b, top[b] : top[b] + 5, left[b] : left[b] + 6])
    images = torch.randn(2, 3, 12, 14)
    cropped_images = crop(images, (top, left), size)
    assert torch.equal(cropped_images[1], images[1, :, top[1] : top[1] + 5, left[1] : left[1] + 6])


def test_class_balanced_crop_falls_back_to_first_box_and_single_map():
    labels = torch.full((20, 20), 4)  # one class: every box scores 0
    top, left = class_balanced_crop_box(labels, 8, generator=torch.Generator().manual_seed(1))
    replay = torch.Generator().manual_seed(1)
    tops = torch.randint(0, 13, (1, 10), generator=replay)
    lefts = torch.randint(0, 13, (1, 10), generator=replay)
    assert top.dim() == 0 and (top.item(), left.item()) == (tops[0, 0].item(), lefts[0, 0].item())
    assert crop(labels, (top, left), 8).shape == (8, 8)
    assert crop(labels, (int(top), int(left)), 8).shape == (8, 8)


def test_crop_is_a_no_op_when_input_fits():
    labels = torch.randint(0, 3, (2, 6, 6))
    top, left = class_balanced_crop_box(labels, (8, 8))
    assert top.tolist() == [0, 0] and left.tolist() == [0, 0]
    assert crop(labels, (top, left), (8, 8)) is labels


def test_pseudo_labels_upsample_and_quality():
    logits = torch.tensor([[10.0, 0.0], [0.0, 0.2]]).t().reshape(1, 2, 1, 2)  # pixel 0 confident, pixel 1 not
    labels, max_prob, q = pseudo_labels_from_logits(logits)
    assert labels.tolist() == [[[0, 1]]]
    assert max_prob[0, 0, 0].item() == pytest.approx(1 / (1 + math.exp(-10)), rel=1e-6)
    assert q.item() == pytest.approx(0.5)
    up_labels, up_prob, up_q = pseudo_labels_from_logits(torch.randn(2, 3, 4, 4), size=(8, 8))
    assert up_labels.shape == (2, 8, 8) and up_prob.shape == (2, 8, 8) and up_q.dim() == 0
    assert threshold_pseudo_labels(labels, max_prob, 0.9).tolist() == [[[0, 255]]]


def test_class_quantile_thresholds_match_numpy_lower_quantile():
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 5, (2, 9, 7), generator=generator)
    labels[labels == 3] = 2  # class 3 absent
    confidence = torch.rand(2, 9, 7, generator=generator)
    thresholds = class_quantile_thresholds(labels, confidence, 0.3, num_classes=5)
    for c in range(5):
        values = confidence[labels == c].numpy()
        expected = np.quantile(values, 0.3, method="lower") if values.size else np.inf
        assert thresholds[c].item() == pytest.approx(float(expected))


def test_class_balanced_pseudo_labels_keep_each_class_best_share():
    labels = torch.tensor([[0, 0, 0, 0, 1, 1, 2]])
    confidence = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.3, 0.2, 0.6]])
    # class 0: sorted 0.1 0.5 0.7 0.9, the 0.5 quantile (lower) is 0.5 -> 0.1 dropped;
    # class 1: sorted 0.2 0.3 -> 0.2, both kept; class 2: its single pixel is kept.
    kept = class_balanced_pseudo_labels(labels, confidence, keep=0.5, num_classes=3)
    assert kept.tolist() == [[0, 255, 0, 0, 1, 1, 2]]
    # keep=0.25: class 0's 0.75 quantile is 0.7, so 0.5 goes too; a global threshold of 0.4 saves it
    kept = class_balanced_pseudo_labels(labels, confidence, keep=0.25, num_classes=3)
    assert kept.tolist() == [[0, 255, 255, 0, 1, 1, 2]]
    kept = class_balanced_pseudo_labels(labels, confidence, keep=0.25, num_classes=3, threshold=0.4)
    assert kept.tolist() == [[0, 255, 0, 0, 1, 1, 2]]
    with pytest.raises(ValueError, match="keep"):
        class_balanced_pseudo_labels(labels, confidence, keep=0.0, num_classes=3)
