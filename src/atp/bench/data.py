"""The data-pipeline benchmark: decode, resize, crop and augment Cityscapes-sized frames per worker."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from atp.bench.records import at_least, measured
from atp.data.io import write_png_atomic

WORKER_IMG_S_TARGET = 5.0
CONSUMPTION_MULTIPLE_TARGET = 3.0
#: Cityscapes frame, the train resize target and the paper's crop (spec §2.4–§2.6).
CITYSCAPES_SIZE = (2048, 1024)
TRAIN_SCALE = (1280, 640)
TRAIN_CROP = (640, 640)


def write_cityscapes_frames(root: Path, count: int, size: tuple[int, int] = CITYSCAPES_SIZE, seed: int = 0) -> Path:
    """``count`` PNGs of ``size`` (width, height; default 2048×1024) in the Cityscapes train layout, photo-like
    in compressibility."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "leftImg8bit" / "train" / "aachen"
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    for index in range(count):
        coarse = rng.integers(0, 256, (max(height // 32, 2), max(width // 32, 2), 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        noisy = np.clip(smooth + rng.integers(-6, 7, smooth.shape), 0, 255).astype(np.uint8)
        write_png_atomic(folder / f"aachen_{index:06d}_000019_leftImg8bit.png", noisy)
    return root


def pipeline_geometry(crop: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(frame, resize, crop) sizes, width first, of the paper's pipeline scaled to a ``crop``² training crop:
    2048×1024 → 1280×640 → 640² at 640, 410×205 → 256×128 → 128² at 128 (like for like with the stages)."""
    return (round(3.2 * crop), round(1.6 * crop)), (2 * crop, crop), (crop, crop)


def bench_data(images: int, samples: int, blocks: int, frame: tuple[int, int] = CITYSCAPES_SIZE,
               scale: tuple[int, int] = TRAIN_SCALE, crop: tuple[int, int] = TRAIN_CROP) -> list[float]:
    """Images per second of the real target training dataset in this process (= one worker), per block of
    ``samples`` samples: PNG decode of a ``frame`` image → resize to ``scale`` → ``crop`` → normalise."""
    from atp.data.datasets import CityscapesDataset

    rates = []
    with tempfile.TemporaryDirectory(prefix="atp-bench-") as tmp:
        root = write_cityscapes_frames(Path(tmp) / "cityscapes", images, frame)
        dataset = CityscapesDataset(root, split="train", scale=scale, labelled=False, pipeline="train",
                                    crop_size=crop)
        dataset[0]  # index the folder, warm the codecs
        for block in range(blocks):
            start = time.perf_counter()
            for index in range(samples):
                sample = dataset[(index % len(dataset), block * samples + index)]
            rates.append(samples / (time.perf_counter() - start))
        assert tuple(sample["img"].shape) == (3, crop[1], crop[0])
    return rates


def data_rows(args: argparse.Namespace, teach_step_seconds: list[float] | None) -> list[dict]:
    """Data throughput per worker at the paper's frame size (absolute target), and — at the same geometry scaled
    to the bench's crop — against what the Teach step of this run consumes (``batch / step time``)."""
    judge = not args.quick
    paper = bench_data(args.data_images, args.data_samples, args.blocks)
    rows = [at_least("data/img_per_s_per_worker", paper, WORKER_IMG_S_TARGET, judge=judge)]
    if teach_step_seconds:
        frame, scale, crop = pipeline_geometry(args.crop)
        scaled = bench_data(args.data_images, args.data_samples, args.blocks, frame, scale, crop)
        consumed = [args.batch / t for t in teach_step_seconds]
        multiples = [min(scaled) / max(consumed), statistics.median(scaled) / statistics.median(consumed),
                     max(scaled) / min(consumed)]  # worst, median, best pairing
        rows += [measured(f"data/img_per_s_per_worker_{frame[0]}x{frame[1]}", scaled),
                 measured("teach/consumed_img_per_s", consumed)]
        rows.append(at_least("data/per_worker_over_teach_consumption", multiples, CONSUMPTION_MULTIPLE_TARGET, "x",
                             judge))
    return rows
