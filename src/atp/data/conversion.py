"""Per-file jobs of ``prepare`` and ``check``, and a small process pool to run them.

This module imports no torch, so the worker processes start quickly.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from atp.data.io import read_image, read_label, write_png_atomic
from atp.data.labels import NUM_CLASSES
from atp.errors import DataFileError


class FileIssue(NamedTuple):
    """A problem found with one file; ``kind`` is ``image``, ``label`` or ``size``."""

    path: str
    problem: str
    kind: str


def convert_label(job: tuple[str, str, str]) -> FileIssue | None:
    """Write the train-id PNG of one raw label file (atomic); return the issue if it cannot."""
    raw_path, train_ids_path, encoding = job
    try:
        train_ids = read_label(raw_path, encoding)
    except DataFileError as err:  # unreadable, or values outside the encoding's table
        return FileIssue(err.path, err.problem, "label")
    write_png_atomic(train_ids_path, train_ids)
    return None


def count_classes(job: tuple[str, str, str]) -> tuple[str, list[int] | None, FileIssue | None]:
    """Pixels per train id of one label file: ``(name, counts, issue)``."""
    name, label_path, encoding = job
    try:
        label = read_label(label_path, encoding)
    except DataFileError as err:
        return name, None, FileIssue(err.path, err.problem, "label")
    return name, np.bincount(label.ravel(), minlength=256)[:NUM_CLASSES].tolist(), None


def verify_sample(job: tuple[str, str | None, str | None, bool]) -> list[FileIssue]:
    """Decode one image (and its label) and report what is wrong with them."""
    image_path, label_path, encoding, allow_size_mismatch = job
    issues = []
    image = None
    try:
        image = read_image(image_path)
    except DataFileError as err:
        issues.append(FileIssue(err.path, err.problem, "image"))
    if label_path is not None:
        try:
            label = read_label(label_path, encoding)
        except DataFileError as err:
            issues.append(FileIssue(err.path, err.problem, "label"))
        else:
            if image is not None and label.shape != image.shape[:2]:
                what = f"label size {label.shape[::-1]} differs from image size {image.shape[1::-1]}"
                issues.append(FileIssue(label_path, what, "size" if allow_size_mismatch else "label"))
    return issues


def run_jobs(
    fn: Callable[[Any], Any], jobs: list[Any], num_workers: int = 0, desc: str = "", progress: bool = True
) -> Iterator[Any]:
    """``fn`` over ``jobs`` (unordered when ``num_workers > 1``), with a progress bar when ``progress``."""
    from atp.progress import progress_bar

    with progress_bar(desc, total=len(jobs), transient=True, disable=not progress or not jobs) as advance:
        if num_workers > 1 and len(jobs) > 1:
            with mp.get_context("spawn").Pool(min(num_workers, len(jobs))) as pool:
                chunk = max(1, min(64, len(jobs) // (num_workers * 8)))
                for result in pool.imap_unordered(fn, jobs, chunksize=chunk):
                    advance()
                    yield result
        else:
            for job in jobs:
                result = fn(job)
                advance()
                yield result


def unique(items: Iterable[Any]) -> list[Any]:
    """Items in first-seen order without repeats."""
    seen, out = set(), []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out
