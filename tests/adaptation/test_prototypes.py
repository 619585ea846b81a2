"""Ratio-pooled label downscaling and the cumulative prototype estimator (incl. the all-reduce path)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from atp.adaptation import PrototypeEstimator, downscale_labels


def test_downscale_labels_by_majority_ratio():
    labels = torch.tensor(
        [
            [0, 0, 1, 1, 2, 2],
            [0, 0, 1, 3, 2, 255],
            [4, 4, 255, 255, 5, 5],
            [4, 6, 255, 7, 6, 5],
        ]
    ).unsqueeze(0)
    # 2×2 cells: 0 (4/4), 1 (3/4), 2 (3/4 vs ignore) ; 4 (3/4), ignore wins (3/4), 5 (3/4)
    assert downscale_labels(labels, factor=2, num_classes=8).tolist() == [[[0, 1, 2], [4, 255, 5]]]
    # ratio threshold above 3/4 keeps only the pure cell
    assert downscale_labels(labels, factor=2, min_ratio=0.8, num_classes=8).tolist() == [
        [[0, 255, 255], [255, 255, 255]]
    ]
    assert torch.equal(downscale_labels(labels, factor=1), labels)


def test_downscale_labels_matches_feature_size_when_not_divisible():
    labels = torch.zeros(1, 6, 7, dtype=torch.long)
    assert downscale_labels(labels, factor=4).shape == (1, 1, 1)
    padded = downscale_labels(labels, factor=4, size=(2, 2))
    assert padded.shape == (1, 2, 2)
    # Column block 2 holds 3 real columns of 4 (3/4 ≥ 0.75), row block 2 only 2 of 4.
    assert padded.tolist() == [[[0, 0], [255, 255]]]


def direct_stats(feats_list, labels_list, num_classes):
    feats = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in feats_list]).double()
    labels = torch.cat([lab.reshape(-1) for lab in labels_list])
    mean = torch.zeros(num_classes, feats.shape[1], dtype=torch.float64)
    var = torch.zeros_like(mean)
    count = torch.zeros(num_classes, dtype=torch.long)
    for c in range(num_classes):
        members = feats[labels == c]
        count[c] = len(members)
        if len(members):
            mean[c] = members.mean(0)
            var[c] = members.var(0, unbiased=False)
    return mean, var, count


def random_batches(seed, n_batches, num_classes=4, dim=3):
    gen = torch.Generator().manual_seed(seed)
    feats = [
        torch.nn.functional.normalize(torch.rand(2, dim, 3, 4, generator=gen), dim=1)
        for _ in range(n_batches)
    ]
    labels = [torch.randint(0, num_classes, (2, 3, 4), generator=gen) for _ in range(n_batches)]
    for lab in labels:
        lab[lab == 3] = 255  # class 3 never seen, plus ignored pixels
    return feats, labels


def test_prototype_update_equals_running_mean_and_variance():
    feats, labels = random_batches(0, 4)
    estimator = PrototypeEstimator(num_classes=4, feat_dim=3)
    for f, lab in zip(feats, labels, strict=True):
        estimator.update(f, lab)
    mean, var, count = direct_stats(feats, labels, 4)
    assert torch.equal(estimator.count, count) and count[3] == 0
    assert torch.allclose(estimator.mean.double(), mean, atol=1e-6)
    assert torch.allclose(estimator.var.double(), var, atol=1e-6)
    assert estimator.mean.dtype == torch.float32 and set(estimator.state_dict()) == {"mean", "var", "count"}
    estimator.reset()
    assert estimator.count.sum() == 0 and estimator.mean.abs().sum() == 0


def test_prototype_update_step_formula():
    estimator = PrototypeEstimator(num_classes=1, feat_dim=1)
    estimator.update(torch.tensor([1.0, 3.0]).view(1, 1, 1, 2), torch.zeros(1, 1, 2, dtype=torch.long))
    estimator.update(torch.tensor([6.0]).view(1, 1, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long))
    # ω = 1/3: var = 2/3·1 + 1/3·0 + 2/9·(2 − 6)² = 4.2222, mean = 2/3·2 + 1/3·6 = 3.3333
    assert estimator.mean.item() == pytest.approx(10 / 3, rel=1e-6)
    assert estimator.var.item() == pytest.approx(2 / 3 + 32 / 9, rel=1e-6)
    assert estimator.count.item() == 3


def _distributed_worker(rank, world_size, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        feats, labels = random_batches(0, 4)
        estimator = PrototypeEstimator(num_classes=4, feat_dim=3)
        for step in range(2):  # rank r takes batches 2·step + r
            index = 2 * step + rank
            estimator.update(feats[index], labels[index])
        if rank == 0:
            torch.save(estimator.state_dict(), out_path)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(60)
def test_all_reduce_update_matches_single_process_on_union(tmp_path):
    out_path = tmp_path / "state.pt"
    mp.spawn(_distributed_worker, args=(2, _free_port(), str(out_path)), nprocs=2, join=True)
    state = torch.load(out_path)

    feats, labels = random_batches(0, 4)
    single = PrototypeEstimator(num_classes=4, feat_dim=3)
    for step in range(2):
        union_feats = torch.cat([feats[2 * step], feats[2 * step + 1]])
        union_labels = torch.cat([labels[2 * step], labels[2 * step + 1]])
        single.update(union_feats, union_labels)
    assert torch.equal(state["count"], single.count)
    assert torch.allclose(state["mean"], single.mean, atol=1e-6)
    assert torch.allclose(state["var"], single.var, atol=1e-6)
