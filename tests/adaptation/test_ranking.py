"""Entropy ranking and the easy/hard split files."""

import math

import pytest
import torch

from atp.adaptation import image_entropy_scores, rank_target_images
from atp.data.splits import EASY_FILE, HARD_FILE, has_split, read_split, split_easy_hard, write_split
from atp.errors import UserError


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
    assert not has_split(tmp_path / "split")
    written = write_split(tmp_path / "split", names, [0.3, 0.1, 0.2, 0.4], easy_ratio=0.5)
    assert has_split(tmp_path / "split")
    assert read_split(tmp_path / "split") == written == (["a.png", "c.png"], ["b.png", "d.png"])
    lines = (tmp_path / "split" / "ranking.csv").read_text().splitlines()
    assert lines[0] == "name,score" and lines[1] == "a.png,0.1" and len(lines) == 5
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["easy.txt", "hard.txt", "ranking.csv"]


# Written by the implementation before the split moved to atp.data.splits (adaptation.ranking.write_split
# after split_easy_hard, 2026-11-29): same names in the same order, same ranking.csv.
PREVIOUS_RANKING = """name,score
seq0/frame_00.png,0.004263520240783691
seq0/frame_03.png,0.026954829692840576
seq2/frame_05.png,0.06011629104614258
seq1/frame_01.png,0.10556936264038086
seq2/frame_02.png,0.2858424782752991
seq1/frame_10.png,0.45103132724761963
seq2/frame_08.png,0.5944212079048157
seq1/frame_04.png,0.7436993718147278
seq1/frame_07.png,0.7436993718147278
seq0/frame_06.png,0.7718658447265625
seq0/frame_09.png,0.887856662273407
"""


def test_split_files_are_those_of_the_previous_implementation(tmp_path):
    rows = [line.split(",") for line in PREVIOUS_RANKING.splitlines()[1:]]
    by_name = {name: float(score) for name, score in rows}
    names = sorted(by_name, key=lambda n: n[-6:])  # frame order, as a loader yields them
    scores = torch.tensor([by_name[n] for n in names], dtype=torch.float32).tolist()  # float32, as ranked
    write_split(tmp_path, names, scores, easy_ratio=0.3)
    ranked = [name for name, _ in rows]
    assert (tmp_path / EASY_FILE).read_text() == "".join(f"{n}\n" for n in ranked[:3])
    assert (tmp_path / HARD_FILE).read_text() == "".join(f"{n}\n" for n in ranked[3:])
    assert (tmp_path / "ranking.csv").read_text() == PREVIOUS_RANKING


def test_write_split_refuses_empty_duplicate_and_one_sided_rankings(tmp_path):
    with pytest.raises(UserError, match="no target-train images"):
        write_split(tmp_path, [], [])
    with pytest.raises(UserError, match="twice"):
        write_split(tmp_path, ["a", "a"], [0.1, 0.2])
    with pytest.raises(UserError, match="easy_ratio=0.3 leaves one side empty"):
        write_split(tmp_path, ["a", "b"], [0.1, 0.2])  # ⌊0.3·2⌋ = 0 easy images
    assert not has_split(tmp_path)


def test_read_split_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{EASY_FILE}: split file missing"):
        read_split(tmp_path)


def test_rank_target_images_scores_every_image_in_eval_mode_and_restores_the_mode():
    class Probe(torch.nn.Module):
        """Logits from the image itself; dropout would change them in train mode."""

        def __init__(self):
            super().__init__()
            self.dropout = torch.nn.Dropout(0.5)

        def forward(self, img):
            return self.dropout(img)

    images = torch.randn(5, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    loader = [{"img": images[:3], "name": ["a", "b", "c"]}, {"img": images[3:], "name": ["d", "e"]}]
    model = Probe().train()
    names, scores = rank_target_images(model, loader)
    assert model.training and names == ["a", "b", "c", "d", "e"]
    expected = image_entropy_scores(images).tolist()  # the probe's logits are the images
    assert scores == pytest.approx(expected, abs=1e-7)
