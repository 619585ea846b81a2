"""Entropy ranking of target images into a static easy/hard split (§7)."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from atp.atomic import atomic_write_text

from .losses import normalized_entropy

__all__ = [
    "image_entropy_scores",
    "split_easy_hard",
    "write_split",
    "read_split",
    "EASY_FILE",
    "HARD_FILE",
    "RANKING_FILE",
]

EASY_FILE, HARD_FILE, RANKING_FILE = "easy.txt", "hard.txt", "ranking.csv"


@torch.no_grad()
def image_entropy_scores(logits: torch.Tensor) -> torch.Tensor:
    """(B,) mean normalised pixel entropy of logits (B, C, H, W).

    The released script also averages over classes (a 1/C factor, #20); the order is the same.
    """
    return normalized_entropy(logits).flatten(1).mean(1)


def split_easy_hard(
    names: Sequence[str], scores: Sequence[float] | torch.Tensor, easy_ratio: float = 0.3
) -> tuple[list[str], list[str]]:
    """Sort by (score, name) ascending; the first ⌊easy_ratio·n⌋ are easy, the rest hard."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().double().tolist()
    if len(names) != len(scores):
        raise ValueError(f"{len(names)} names but {len(scores)} scores")
    ranked = sorted(zip((float(s) for s in scores), (str(n) for n in names), strict=True))
    ordered = [name for _, name in ranked]
    n_easy = math.floor(easy_ratio * len(ordered) + 1e-9)  # guard 0.29·100 = 28.999…
    return ordered[:n_easy], ordered[n_easy:]


def write_split(
    directory: str | os.PathLike,
    easy: Sequence[str],
    hard: Sequence[str],
    scores: Mapping[str, float] | None = None,
) -> None:
    """Write easy.txt / hard.txt (one name per line) and, with `scores`, ranking.csv (name,score).

    ranking.csv lists easy then hard, i.e. the ranked order. Each file is replaced atomically.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / EASY_FILE, "".join(f"{name}\n" for name in easy))
    _write_atomic(directory / HARD_FILE, "".join(f"{name}\n" for name in hard))
    if scores is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(("name", "score"))
        for name in (*easy, *hard):
            writer.writerow((name, repr(float(scores[name]))))
        _write_atomic(directory / RANKING_FILE, buffer.getvalue())


def read_split(directory: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(easy, hard) name lists written by `write_split`."""
    directory = Path(directory)
    return _read_lines(directory / EASY_FILE), _read_lines(directory / HARD_FILE)


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


def _write_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text)
