"""The easy/hard split of the target-train images (spec §7): the rule, the files, writing and reading.

A split directory holds ``easy.txt`` and ``hard.txt`` (one image name per line, in ranked order) and,
when written from scores, ``ranking.csv`` (``name,score`` for every image, easy then hard). The scores
come from :func:`atp.adaptation.ranking.rank_target_images`; this module knows only names and numbers.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

from atp.atomic import atomic_write_text
from atp.errors import UserError

__all__ = ["EASY_FILE", "HARD_FILE", "RANKING_FILE", "has_split", "read_split", "split_easy_hard", "write_split"]

EASY_FILE, HARD_FILE, RANKING_FILE = "easy.txt", "hard.txt", "ranking.csv"


def split_easy_hard(names: Sequence[str], scores: Sequence[float], easy_ratio: float = 0.3
                    ) -> tuple[list[str], list[str]]:
    """Sort by (score, name) ascending; the first ⌊easy_ratio·n⌋ are easy, the rest hard."""
    scores = _floats(scores)
    if len(names) != len(scores):
        raise ValueError(f"{len(names)} names but {len(scores)} scores")
    ranked = sorted(zip(scores, (str(n) for n in names), strict=True))
    ordered = [name for _, name in ranked]
    n_easy = math.floor(easy_ratio * len(ordered) + 1e-9)  # guard 0.29·100 = 28.999…
    return ordered[:n_easy], ordered[n_easy:]


def write_split(directory: str | os.PathLike, names: Sequence[str], scores: Sequence[float],
                easy_ratio: float = 0.3) -> tuple[list[str], list[str]]:
    """Split ranked images (lowest ``easy_ratio`` share of scores = easy) and write the split files.

    Writes ``easy.txt``, ``hard.txt`` and ``ranking.csv`` into ``directory``, each atomically; returns
    ``(easy, hard)``. Refuses an empty ranking, a name scored twice and a split with an empty side.
    """
    if not names:
        raise UserError("entropy ranking found no target-train images; check the dataset with atp.data.check")
    if len(set(names)) != len(names):
        raise UserError("entropy ranking scored an image twice; the rank shards overlap")
    scores = _floats(scores)
    easy, hard = split_easy_hard(names, scores, easy_ratio=easy_ratio)
    if not easy or not hard:
        raise UserError(f"the easy/hard split of {len(names)} images with stage.rank.easy_ratio={easy_ratio} "
                        "leaves one side empty; choose a ratio strictly between 0 and 1 that leaves one image each")
    score_of = dict(zip(names, scores, strict=True))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / EASY_FILE, "".join(f"{name}\n" for name in easy))
    atomic_write_text(directory / HARD_FILE, "".join(f"{name}\n" for name in hard))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("name", "score"))
    for name in (*easy, *hard):
        writer.writerow((name, repr(score_of[name])))
    atomic_write_text(directory / RANKING_FILE, buffer.getvalue())
    return easy, hard


def _floats(scores: Sequence[float]) -> list[float]:
    if hasattr(scores, "tolist"):  # a tensor or an array
        scores = scores.tolist()
    return [float(s) for s in scores]


def has_split(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds both split files."""
    directory = Path(directory)
    return (directory / EASY_FILE).is_file() and (directory / HARD_FILE).is_file()


def read_split(directory: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``(easy, hard)`` image names of a split directory (blank lines and surrounding spaces ignored)."""
    directory = Path(directory)
    return _read_names(directory / EASY_FILE), _read_names(directory / HARD_FILE)


def _read_names(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: split file missing; it is written by the entropy ranking that precedes stage=propagate "
            f"(run stage=teach first, or pass split_dir=<folder with {EASY_FILE} and {HARD_FILE}>)"
        )
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
