"""Tiny dataset trees in the official layouts and encodings (test data; used through ``conftest.py``).

Every image is a flat-colour picture of its label: each class region has its own colour
(:data:`FIXTURE_COLOURS`), so a test can check image/label agreement pixel by pixel after crops
and flips. The label layout (train ids) of image ``i`` is :func:`fixture_train_ids`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atp.data.io import write_png_atomic
from atp.data.labels import CITYSCAPES_ID_TO_TRAIN_ID, IGNORE_INDEX, LABEL_ID_PALETTE, SYNTHIA_ID_TO_TRAIN_ID

FIXTURE_SIZE = (64, 32)  # (width, height)
#: Train id → RGB of the flat colour drawn for it (255 = void regions).
FIXTURE_COLOURS: dict[int, tuple[int, int, int]] = {
    10: (70, 130, 180),  # sky
    2: (90, 90, 90),  # building
    0: (128, 64, 128),  # road
    1: (240, 40, 230),  # sidewalk
    13: (0, 0, 142),  # car
    11: (220, 20, 60),  # person
    IGNORE_INDEX: (10, 10, 10),
}
_TRAIN_TO_CITYSCAPES = {t: i for i, t in CITYSCAPES_ID_TO_TRAIN_ID.items()}
_TRAIN_TO_SYNTHIA = {t: i for i, t in SYNTHIA_ID_TO_TRAIN_ID.items()}


def fixture_train_ids(index: int, size: tuple[int, int] = FIXTURE_SIZE) -> np.ndarray:
    """Train-id layout of fixture image ``index``: sky/building above, road/sidewalk below, a car,
    a person and a void block whose positions depend on ``index``."""
    width, height = size
    label = np.full((height, width), 10, np.uint8)
    label[: height // 2, (index * 7) % (width // 2) : (index * 7) % (width // 2) + width // 3] = 2
    label[height // 2 :, :] = 0
    label[height // 2 :, : width // 5] = 1
    car_x = (index * 11) % (width - 16) + 4
    label[height // 2 + 2 : height // 2 + 9, car_x : car_x + 12] = 13
    label[height // 2 - 6 : height - 4, width - 8 : width - 5] = 11
    label[1:4, 1 + index % 5 : 6 + index % 5] = IGNORE_INDEX
    return label


def fixture_rgb(train_ids: np.ndarray) -> np.ndarray:
    """The flat-colour RGB picture of a train-id label."""
    rgb = np.zeros((*train_ids.shape, 3), np.uint8)
    for train_id, colour in FIXTURE_COLOURS.items():
        rgb[train_ids == train_id] = colour
    return rgb


def _to_cityscapes_ids(train_ids: np.ndarray) -> np.ndarray:
    raw = np.zeros_like(train_ids)  # void → 0 "unlabeled"
    for train_id, raw_id in _TRAIN_TO_CITYSCAPES.items():
        raw[train_ids == train_id] = raw_id
    return raw


def _to_synthia_label(train_ids: np.ndarray, seed: int) -> np.ndarray:
    """16-bit 3-channel RGB array: class id in red, an instance id in green (as SYNTHIA ships)."""
    raw = np.zeros((*train_ids.shape, 3), np.uint16)
    for train_id, raw_id in _TRAIN_TO_SYNTHIA.items():
        raw[..., 0][train_ids == train_id] = raw_id
    raw[..., 1] = np.random.default_rng(seed).integers(0, 4000, train_ids.shape, dtype=np.uint16)
    return raw


def write_gta(root: str | Path, n: int = 4, mismatched: tuple[int, ...] = (2,)) -> Path:
    """GTA5: ``images/0000N.png`` + palette ``labels/0000N.png``; labels of ``mismatched`` are 2 px larger."""
    root = Path(root)
    for i in range(1, n + 1):
        ids = fixture_train_ids(i)
        write_png_atomic(root / "images" / f"{i:05d}.png", fixture_rgb(ids))
        raw = _to_cityscapes_ids(ids)
        if i in mismatched:
            raw = np.pad(raw, ((0, 2), (0, 2)), mode="edge")
        write_png_atomic(root / "labels" / f"{i:05d}.png", raw, palette=LABEL_ID_PALETTE)
    return root


def write_synthia(root: str | Path, n: int = 3) -> Path:
    """SYNTHIA: ``RGB/000000N.png`` + 16-bit 3-channel ``GT/LABELS/000000N.png``."""
    root = Path(root)
    for i in range(n):
        ids = fixture_train_ids(i)
        write_png_atomic(root / "RGB" / f"{i:07d}.png", fixture_rgb(ids))
        write_png_atomic(root / "GT" / "LABELS" / f"{i:07d}.png", _to_synthia_label(ids, i))
    return root


def write_cityscapes(
    root: str | Path, n_train: int = 6, n_val: int = 2, cities: tuple[str, ...] = ("aachen", "bremen")
) -> Path:
    """Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/…_gtFine_labelIds.png``."""
    root = Path(root)
    for split, count, offset in (("train", n_train, 0), ("val", n_val, 100)):
        for i in range(count):
            city = cities[i % len(cities)] if split == "train" else "frankfurt"
            base = f"{city}_{i:06d}_000019"
            ids = fixture_train_ids(offset + i)
            write_png_atomic(
                root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png", fixture_rgb(ids)
            )
            write_png_atomic(
                root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png", _to_cityscapes_ids(ids)
            )
    return root


def write_acdc(
    root: str | Path, conditions: tuple[str, ...] = ("night", "fog"), n_train: int = 4, n_val: int = 2
) -> Path:
    """ACDC: ``rgb_anon/<cond>/<split>/<seq>/*_rgb_anon.png`` + ``gt/…/*_gt_labelTrainIds.png``."""
    root = Path(root)
    for c, condition in enumerate(conditions):
        for split, count in (("train", n_train), ("val", n_val)):
            for i in range(count):
                seq = f"GOPR{c:02d}{i % 2:02d}"
                base = f"{seq}_frame_{i:06d}"
                ids = fixture_train_ids(10 * c + i + (50 if split == "val" else 0))
                write_png_atomic(
                    root / "rgb_anon" / condition / split / seq / f"{base}_rgb_anon.png", fixture_rgb(ids)
                )
                # ACDC ships train labels too; target training never opens them
                write_png_atomic(root / "gt" / condition / split / seq / f"{base}_gt_labelTrainIds.png", ids)
    return root


def write_dark_zurich(root: str | Path, n_train: int = 4, n_val: int = 2) -> Path:
    """Dark Zurich: ``rgb_anon/<split>/night/<seq>/*_rgb_anon.png`` + ``gt/val/night/<seq>/…``."""
    root = Path(root)
    for split, count in (("train", n_train), ("val", n_val)):
        for i in range(count):
            seq = "GOPR0356"
            base = f"{seq}_frame_{i:06d}"
            ids = fixture_train_ids(200 + i + (50 if split == "val" else 0))
            write_png_atomic(
                root / "rgb_anon" / split / "night" / seq / f"{base}_rgb_anon.png", fixture_rgb(ids)
            )
            if split == "val":
                write_png_atomic(root / "gt" / split / "night" / seq / f"{base}_gt_labelTrainIds.png", ids)
    return root


def write_all(data_dir: str | Path) -> Path:
    """Every fixture tree under ``data_dir`` with the folder names the dataset configs expect."""
    data_dir = Path(data_dir)
    write_gta(data_dir / "gta")
    write_synthia(data_dir / "synthia")
    write_cityscapes(data_dir / "cityscapes")
    write_acdc(data_dir / "acdc")
    write_dark_zurich(data_dir / "dark_zurich")
    return data_dir


def write_test_splits(data_dir: str | Path, n: int = 2) -> Path:
    """The unlabelled ``test`` splits in the official layouts, with the folder names the dataset configs expect:
    Cityscapes ``leftImg8bit/test/<city>/``, ACDC ``rgb_anon/<cond>/test/<seq>/`` (night, fog) and Dark Zurich
    ``rgb_anon/test/night/<seq>/``. Image ``i`` of each is :func:`fixture_train_ids` ``(300 + i)`` drawn flat;
    the Cityscapes test images are 2 px wider than the eval scale, so an export at the original size shows."""
    data_dir = Path(data_dir)
    for i in range(n):
        ids = fixture_train_ids(300 + i)
        city = ("berlin", "bielefeld")[i % 2]
        wide = fixture_rgb(fixture_train_ids(300 + i, (FIXTURE_SIZE[0] + 2, FIXTURE_SIZE[1])))
        write_png_atomic(
            data_dir / "cityscapes" / "leftImg8bit" / "test" / city / f"{city}_{i:06d}_000019_leftImg8bit.png", wide
        )
        for condition in ("night", "fog"):
            seq = f"GOPR05{i % 2:02d}"
            path = data_dir / "acdc" / "rgb_anon" / condition / "test" / seq / f"{seq}_frame_{i:06d}_rgb_anon.png"
            write_png_atomic(path, fixture_rgb(ids))
        seq = "GOPR0364"
        write_png_atomic(
            data_dir / "dark_zurich" / "rgb_anon" / "test" / "night" / seq / f"{seq}_frame_{i:06d}_rgb_anon.png",
            fixture_rgb(ids),
        )
    return data_dir
