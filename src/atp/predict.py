"""``python -m atp.predict ckpt=<checkpoint> input=<folder|glob|image|video> out=<folder>`` (``atp-predict``).

Segments the user's own images and videos with any checkpoint ``atp.convert`` reads (``weights=student``
or ``teacher``), with the evaluation settings of ``conf/evaluate.yaml`` (``eval.mode=whole|slide``,
``eval.flip``, the dataset's evaluation scale). Images of any size are resized to that scale, segmented
and the prediction is upsampled back to the image's own size. Per image it writes
``<name>_trainIds.png`` (train ids), ``<name>_color.png`` (Cityscapes colours) and ``<name>_overlay.png``;
per video ``<name>_overlay.mp4``. Files that cannot be read are reported in one line each and skipped;
the exit status is then 1.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from omegaconf import DictConfig
from rich.progress import Progress

from atp.cli import hydra_entry
from atp.data.io import read_image, write_png_atomic
from atp.data.labels import colourise
from atp.data.transforms import build_eval_transform
from atp.errors import UnreadableFileError, UserError
from atp.evaluate import load_model, segment_options
from atp.evaluation.inference import resolve_device, segment
from atp.progress import live_progress, note

log = logging.getLogger("atp.predict")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
VIDEO_CODEC = "mp4v"  # MPEG-4 part 2 in .mp4: written by every OpenCV build, headless ones included


@dataclass
class PredictSummary:
    """What a run wrote and skipped."""

    images: int = 0
    videos: int = 0
    frames: int = 0
    skipped: list[str] = field(default_factory=list)


# -------------------------------------------------------------------------------------------- inputs


def find_inputs(spec: str) -> tuple[Path, list[Path]]:
    """The images and videos ``spec`` (a folder, searched recursively; a glob; one file) names, sorted, and
    the folder their output names are relative to."""
    text = os.path.expanduser(str(spec))
    known = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    if glob.has_magic(text):
        parts = Path(text).parts
        fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        root = Path(*parts[:fixed]) if fixed else Path(".")
        files = sorted(Path(p) for p in glob.glob(text, recursive=True)
                       if Path(p).is_file() and Path(p).suffix.lower() in known)
        kind = "no image or video file matches"
    elif Path(text).is_dir():
        root = Path(text)
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in known)
        kind = "no image or video file in the folder"
    elif Path(text).is_file():
        root, files, kind = Path(text).parent, [Path(text)], ""
    else:
        raise UserError(f"input={spec}: no such file or folder (give a folder, a glob such as 'dir/*.png', "
                        "an image or a video)")
    if not files:
        raise UserError(f"input={spec}: {kind} (known suffixes: {', '.join(sorted(known))})")
    return root, files


def output_stem(out_dir: Path, root: Path, path: Path) -> Path:
    """``out_dir/<path relative to root, without suffix>`` (so same-named files of sub-folders do not clash)."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        relative = Path(path.name)
    return out_dir / relative.with_suffix("")


# ------------------------------------------------------------------------------------------ predicting


class Predictor:
    """A segmentor with the evaluation settings: RGB uint8 images of one size → train ids at that size."""

    def __init__(self, model: torch.nn.Module, scale, options: dict, device: torch.device) -> None:
        """``options``: :func:`atp.evaluation.inference.segment` keyword arguments (:func:`atp.evaluate.segment_options`)."""
        self.model = model.eval().to(device)
        self.device = device
        self.transform = build_eval_transform(scale)
        self.options = options

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Train ids (H, W) uint8 per image; all images have the same size."""
        batch = torch.stack([torch.from_numpy(self.transform(image=image)["image"]).permute(2, 0, 1)
                             for image in images]).to(self.device)
        pred = segment(self.model, batch, images[0].shape[:2], **self.options)
        return list(pred.to(torch.uint8).cpu().numpy())


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """The class ``colours`` (:func:`atp.data.labels.colourise`) blended over the RGB ``image`` (``alpha`` = colour
    weight)."""
    return cv2.addWeighted(colours, alpha, image, 1.0 - alpha, 0.0)


def same_size_batches(items: Iterator[tuple], batch_size: int) -> Iterator[list[tuple]]:
    """Consecutive ``(…, image)`` items in lists of at most ``batch_size`` images of one size."""
    batch: list[tuple] = []
    for item in items:
        if batch and (len(batch) == batch_size or batch[0][-1].shape != item[-1].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def predict_images(predictor: Predictor, paths: list[Path], root: Path, out_dir: Path, cfg: DictConfig,
                   summary: PredictSummary, advance: Callable[[], None]) -> None:
    """Write the three PNGs of every readable image of ``paths``; one line per unreadable one. ``advance`` is
    called once per file."""

    def readable() -> Iterator[tuple[Path, np.ndarray]]:
        for path in paths:
            try:
                image = read_image(path)
            except UnreadableFileError as err:
                skip(summary, path, str(err).removeprefix(f"{path}: "))
                advance()
                continue
            yield path, image

    for batch in same_size_batches(readable(), int(cfg.batch_size)):
        for (path, image), train_ids in zip(batch, predictor([image for _, image in batch]), strict=True):
            stem = output_stem(out_dir, root, path)
            write_png_atomic(stem.with_name(f"{stem.name}_trainIds.png"), train_ids)
            colours = colourise(train_ids)
            write_png_atomic(stem.with_name(f"{stem.name}_color.png"), colours)
            write_png_atomic(stem.with_name(f"{stem.name}_overlay.png"), overlay(image, colours, cfg.overlay_alpha))
            summary.images += 1
            advance()


def predict_video(predictor: Predictor, path: Path, root: Path, out_dir: Path, cfg: DictConfig,
                  summary: PredictSummary, progress: Progress) -> None:
    """Write ``<name>_overlay.mp4`` (same frame rate and size); an unreadable video is skipped. Its frames are
    counted on a task of ``progress`` that goes when the video is done."""
    capture = cv2.VideoCapture(str(path))
    ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        capture.release()
        skip(summary, path, "video cannot be opened or decoded (corrupt, truncated or an unsupported codec)")
        return
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    height, width = first.shape[:2]
    stem = output_stem(out_dir, root, path)
    target = stem.with_name(f"{stem.name}_overlay.mp4")
    partial = target.with_name(f".{target.stem}.partial.mp4")  # renamed when complete
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*VIDEO_CODEC), fps, (width, height))
    if not writer.isOpened():
        capture.release()
        raise UserError(f"{partial}: OpenCV cannot write {VIDEO_CODEC} video here")

    def frames() -> Iterator[tuple[np.ndarray]]:
        frame = first
        while frame is not None:
            yield (cv2.cvtColor(frame, cv2.COLOR_BGR2RGB),)
            ok, frame = capture.read()
            frame = frame if ok else None

    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    written = 0
    task = progress.add_task(path.name, total=total)
    try:
        for batch in same_size_batches(frames(), int(cfg.batch_size)):
            rgb = [frame for (frame,) in batch]
            for frame, train_ids in zip(rgb, predictor(rgb), strict=True):
                writer.write(cv2.cvtColor(overlay(frame, colourise(train_ids), cfg.overlay_alpha), cv2.COLOR_RGB2BGR))
                written += 1
            progress.advance(task, len(rgb))
    finally:
        progress.remove_task(task)
        capture.release()
        writer.release()
    os.replace(partial, target)
    summary.videos += 1
    summary.frames += written


def skip(summary: PredictSummary, path: Path, reason: str) -> None:
    """Report an unreadable input in one line and remember it."""
    summary.skipped.append(str(path))
    note(f"atp.predict: skipped {path}: {reason}")


# ------------------------------------------------------------------------------------------------ run


def predict(cfg: DictConfig) -> PredictSummary:
    """Segment every input of ``cfg.input`` into ``cfg.out``; see the module docstring."""
    root, files = find_inputs(cfg.input)
    out_dir = Path(str(cfg.out)).expanduser()
    files = [path for path in files if not path.resolve().is_relative_to(out_dir.resolve())]  # earlier outputs
    if not files:
        raise UserError(f"input={cfg.input}: only earlier predictions (under out={out_dir}) found")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    predictor = Predictor(load_model(cfg, device), cfg.scale, segment_options(cfg), device)
    summary = PredictSummary()
    videos = [path for path in files if path.suffix.lower() in VIDEO_SUFFIXES]
    images = [path for path in files if path.suffix.lower() not in VIDEO_SUFFIXES]
    with live_progress() as progress:
        files_task = progress.add_task("predict", total=len(files))
        predict_images(predictor, images, root, out_dir, cfg, summary, lambda: progress.advance(files_task))
        for path in videos:
            predict_video(predictor, path, root, out_dir, cfg, summary, progress)
            progress.advance(files_task)
    return summary


@hydra_entry("predict")
def main(cfg: DictConfig) -> None:
    summary = predict(cfg)
    print(f"atp.predict: wrote {summary.images} image(s) and {summary.videos} video(s) ({summary.frames} frames) "
          f"to {cfg.out}" + (f"; skipped {len(summary.skipped)} unreadable file(s)" if summary.skipped else ""))
    if summary.skipped:
        sys.exit(1)


if __name__ == "__main__":
    main()
