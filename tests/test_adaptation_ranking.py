"""Entropy ranking and the easy/hard split files."""

import math

import torch

from atp.adaptation import image_entropy_scores, read_split, split_easy_hard, write_split


def test_image_entropy_scores_is_mean_normalised_entropy():
    logits = torch.zeros(2, 3, 1, 2)
    logits[1, 0] = torch.tensor([2.0, 0.0])
    scores = image_entropy_scores(logits)
    exps = [math.exp(2.0), 1.0, 1.0]
    p = [e / sum(exps) for e in exps]
    h = -sum(v * math.log(v) for v in p) / math.log(3)
    assert scores.shape == (2,)
    assert torch.allclose(scores, torch.tensor([1.0, (h + 1.0) / 2]), atol=1e-6)


def test_split_is_thirty_seventy_and_deterministic():
    names = [f"city/img_{i}.png" for i in range(10)]
    scores = [0.5, 0.1, 0.9, 0.1, 0.3, 0.7, 0.2, 0.8, 0.6, 0.4]
    easy, hard = split_easy_hard(names, scores)
    assert easy == ["city/img_1.png", "city/img_3.png", "city/img_6.png"]  # ties broken by name
    assert len(hard) == 7 and hard[0] == "city/img_4.png" and hard[-1] == "city/img_2.png"
    shuffled = list(zip(names, scores, strict=True))[::-1]
    assert split_easy_hard([n for n, _ in shuffled], torch.tensor([s for _, s in shuffled])) == (easy, hard)
    assert len(split_easy_hard([str(i) for i in range(2975)], [0.0] * 2975)[0]) == 892
    assert len(split_easy_hard([str(i) for i in range(100)], [0.0] * 100, easy_ratio=0.29)[0]) == 29


def test_write_and_read_split(tmp_path):
    names = ["b.png", "a.png", "c.png", "d.png"]
    scores = dict(zip(names, [0.3, 0.1, 0.2, 0.4], strict=True))
    easy, hard = split_easy_hard(names, [scores[n] for n in names], easy_ratio=0.5)
    write_split(tmp_path / "split", easy, hard, scores)
    assert read_split(tmp_path / "split") == (["a.png", "c.png"], ["b.png", "d.png"])
    lines = (tmp_path / "split" / "ranking.csv").read_text().splitlines()
    assert lines[0] == "name,score" and lines[1] == "a.png,0.1" and len(lines) == 5
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["easy.txt", "hard.txt", "ranking.csv"]
