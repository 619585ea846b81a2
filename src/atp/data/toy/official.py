"""Toy street scenes written as the real datasets ship them: official layouts, real image sizes, raw label
encodings (spec §2.2, §2.4). The full-size rehearsal (``python -m atp.rehearse``) trains and evaluates on such a
tree, so every path a user's data takes runs at the resolution it has on real data.

=============  ===========  ==============================================================================
dataset        size (W×H)   files
=============  ===========  ==============================================================================
GTA5           1914×1052    ``gta/images/NNNNN.png`` + ``gta/labels/NNNNN.png`` (label ids, indexed PNG)
Cityscapes     2048×1024    ``cityscapes/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
                            + ``cityscapes/gtFine/<split>/<city>/…_gtFine_labelIds.png`` (train and val)
ACDC           1920×1080    ``acdc/rgb_anon/<cond>/<split>/<seq>/<seq>_frame_<n>_rgb_anon.png``
                            + ``acdc/gt/<cond>/<split>/<seq>/…_gt_labelTrainIds.png`` (train and val)
=============  ===========  ==============================================================================

The scenes come from :func:`atp.data.toy.generate.render_scene`: GTA5 in the source look, Cityscapes in the
default target look, ACDC in the look of the shift family named like its condition (``fog``, ``night``,
``snow``; ``rain`` takes ``mixed``). Every PNG goes through :func:`atp.data.io.write_png_atomic`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2

from atp.data.io import write_png_atomic
from atp.data.labels import LABEL_ID_PALETTE, to_train_ids
from atp.data.toy.generate import render_scene
from atp.data.toy.shifts import DEFAULT_SHIFT, SHIFTS

#: (width, height) of each dataset's images as published (spec §2.4).
GTA5_SIZE = (1914, 1052)
CITYSCAPES_SIZE = (2048, 1024)
ACDC_SIZE = (1920, 1080)
#: The file that records what a tree was written with (a tree with another one is rewritten).
INFO_FILE = "official_toy_info.json"
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",), "test": ("berlin", "bielefeld")}
SEQUENCES = {"train": ("GOPR0475", "GOPR0476"), "val": ("GOPR0478",), "test": ("GOPR0477",)}
#: Image indices of each split start here, so no two splits share a scene.
SPLIT_OFFSET = {"train": 0, "val": 10_000, "test": 20_000}
LABELLED_SPLITS = ("train", "val")


@dataclass(frozen=True)
class OfficialTreeSpec:
    """How many images each dataset gets: ``gta`` source images, and per split (train, val, test) the
    Cityscapes and ACDC ones; ``condition`` is the ACDC condition written."""

    gta: int = 2
    cityscapes: Mapping[str, int] = field(default_factory=lambda: {"train": 4, "val": 1, "test": 1})
    acdc: Mapping[str, int] = field(default_factory=lambda: {"train": 4, "val": 1, "test": 1})
    condition: str = "fog"
    seed: int = 0

    def as_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def images(self) -> int:
        return self.gta + sum(self.cityscapes.values()) + sum(self.acdc.values())


def condition_shift(condition: str) -> str:
    """The toy shift family that draws an ACDC condition (its own name when there is one)."""
    return condition if condition in SHIFTS else DEFAULT_SHIFT


def write_gta5(root: Path, count: int, seed: int = 0) -> list[Path]:
    """GTA5 at 1914×1052: ``images/NNNNN.png`` and label ids in an indexed ``labels/NNNNN.png``."""
    images = []
    for i in range(count):
        rgb, ids = render_scene(seed, "source", i, GTA5_SIZE)
        images.append(root / "images" / f"{i + 1:05d}.png")
        write_png_atomic(images[-1], rgb)
        write_png_atomic(root / "labels" / f"{i + 1:05d}.png", ids, palette=LABEL_ID_PALETTE)
    return images


def write_cityscapes(root: Path, counts: Mapping[str, int], seed: int = 0) -> list[Path]:
    """Cityscapes at 2048×1024: ``leftImg8bit/<split>/<city>/…`` and, for train and val, the
    ``gtFine/…_gtFine_labelIds.png`` label ids (the test split ships no public labels)."""
    images = []
    for split, count in counts.items():
        cities = CITIES[split]
        for i in range(count):
            city = cities[i % len(cities)]
            base = f"{city}_{i // len(cities):06d}_000019"
            domain = "target" if split == "train" else "target_val"
            rgb, ids = render_scene(seed, domain, SPLIT_OFFSET[split] + i, CITYSCAPES_SIZE)
            images.append(root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png")
            write_png_atomic(images[-1], rgb)
            if split in LABELLED_SPLITS:
                write_png_atomic(root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png", ids)
    return images


def write_acdc(root: Path, counts: Mapping[str, int], condition: str = "fog", seed: int = 0) -> list[Path]:
    """One ACDC condition at 1920×1080: ``rgb_anon/<cond>/<split>/<seq>/…_rgb_anon.png`` and, for train and
    val, ``gt/<cond>/<split>/<seq>/…_gt_labelTrainIds.png`` (ACDC ships train ids)."""
    images = []
    shift = condition_shift(condition)
    for split, count in counts.items():
        for i in range(count):
            seq = SEQUENCES[split][i % len(SEQUENCES[split])]
            base = f"{seq}_frame_{i:06d}"
            domain = "target" if split == "train" else "target_val"
            rgb, ids = render_scene(seed + 1, domain, SPLIT_OFFSET[split] + i, ACDC_SIZE, shift)
            images.append(root / "rgb_anon" / condition / split / seq / f"{base}_rgb_anon.png")
            write_png_atomic(images[-1], rgb)
            if split in LABELLED_SPLITS:
                train_ids = to_train_ids(ids, "cityscapes_ids")
                write_png_atomic(root / "gt" / condition / split / seq / f"{base}_gt_labelTrainIds.png", train_ids)
    return images


def write_official_tree(data_dir: str | os.PathLike, spec: OfficialTreeSpec) -> bool:
    """``data_dir/{gta,cityscapes,acdc}`` as :class:`OfficialTreeSpec` says; returns False (nothing written) when
    the tree there was written with the same spec. A tree written with another spec is removed first (only
    the three dataset folders, and only when ``data_dir`` holds :data:`INFO_FILE`)."""
    import shutil

    data_dir = Path(data_dir)
    info = data_dir / INFO_FILE
    wanted = spec.as_dict()
    if info.is_file():
        try:
            if json.loads(info.read_text()) == wanted:
                return False
        except ValueError:
            pass
        info.unlink()
        for name in ("gta", "cityscapes", "acdc"):
            shutil.rmtree(data_dir / name, ignore_errors=True)
    write_gta5(data_dir / "gta", spec.gta, spec.seed)
    write_cityscapes(data_dir / "cityscapes", spec.cityscapes, spec.seed)
    write_acdc(data_dir / "acdc", spec.acdc, spec.condition, spec.seed)
    info.write_text(json.dumps(wanted, indent=1) + "\n")
    return True


def write_video(path: str | os.PathLike, frames: int, size: tuple[int, int] = ACDC_SIZE, seed: int = 0,
                fps: float = 10.0) -> Path:
    """A short ``mp4v`` video of ``frames`` toy scenes at ``size`` (W×H), written with OpenCV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, tuple(size))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write mp4v video here")
    try:
        for i in range(frames):
            rgb, _ = render_scene(seed, "target_val", 30_000 + i, size)
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path

