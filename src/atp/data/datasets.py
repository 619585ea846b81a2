"""Dataset classes reading the official on-disk layouts (spec §2.4).

Each class only knows its layout (:meth:`SegmentationDataset.scan`); loading, label conversion,
the albumentations pipeline and the skipping of unusable samples are shared. A dataset is
*labelled* (source training, evaluation) or *unlabelled* (target training: label files are never
opened). ``__getitem__`` accepts an index or ``(index, augmentation_seed)`` from
:class:`atp.data.sampler.InfiniteStreamSampler`.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from atp.data.io import read_image, read_label
from atp.data.transforms import build_eval_transform, build_train_transform, reseed
from atp.errors import DataFileError, DatasetLayoutError

log = logging.getLogger(__name__)

#: How many following samples ``__getitem__`` tries before giving up on a run of unusable files.
MAX_CONSECUTIVE_SKIPS = 32


@dataclass(frozen=True)
class SampleFiles:
    """One sample on disk: ``name`` is the image path relative to the dataset root."""

    name: str
    image: Path
    label: Path | None = None  # the preferred existing label file, else the expected raw one
    label_encoding: str | None = None  # "train_ids" | "cityscapes_ids" | "synthia_ids"
    label_found: bool = False


@dataclass
class LayoutReport:
    """What :meth:`SegmentationDataset.inspect_layout` found."""

    samples: list[SampleFiles] | None  # None when a required folder is missing (nothing scanned)
    errors: list[DatasetLayoutError]


def _listing(folder: Path) -> set[str]:
    """File names in ``folder`` (empty when it does not exist)."""
    try:
        return {entry.name for entry in os.scandir(folder)}
    except FileNotFoundError:
        return set()


def _pick_label(
    folder: Path, train_ids_name: str, raw_name: str | None, raw_encoding: str | None, existing: set[str]
) -> tuple[Path, str, bool]:
    """Prefer ``*_labelTrainIds.png`` when present, else the raw-id file."""
    if train_ids_name in existing:
        return folder / train_ids_name, "train_ids", True
    if raw_name is not None and raw_name in existing:
        return folder / raw_name, raw_encoding, True
    expected = raw_name if raw_name is not None else train_ids_name
    return folder / expected, raw_encoding if raw_name is not None else "train_ids", False


class SegmentationDataset(Dataset, ABC):
    """Shared loading logic; subclasses define the layout.

    Args:
        root: dataset folder (e.g. ``data/gta``).
        split: ``train`` / ``val`` (ignored by GTA5 and SYNTHIA, which have one split).
        scale: ``(long, short)`` keep-ratio resize target (mmcv rescale).
        labelled: load labels; ``False`` never opens a label file.
        pipeline: ``train`` (resize, crop, flip, normalise, pad) or ``eval`` (resize, normalise;
            labels stay at their original size).
        crop_size: ``(height, width)`` of training crops, ``None`` for whole resized images.
        cat_max_ratio: crop rejection threshold (labelled training only; 1.0 = off).
        flip_prob: horizontal-flip probability in training.
        names: keep only these sample names (paths relative to ``root``), e.g. an easy/hard split.
        skip_bad_samples: replace an unusable sample by the next usable one (default: in training).
        config_name: the dataset config's name, used in error messages (``dataset=<name>``).
        missing_fix: what to tell the user when the folder is missing (default: the download hint).
    """

    #: Short display name.
    display_name: ClassVar[str] = "dataset"
    #: Published sizes per split, for ``check`` (a mismatch is only a warning).
    published_counts: ClassVar[dict[str, int]] = {}
    #: Where to get the data.
    download_hint: ClassVar[str] = ""
    #: Label files whose size may differ from the image (GTA5): resized with nearest, counted, warned.
    allow_label_size_mismatch: ClassVar[bool] = False

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        scale: Sequence[int] = (1280, 720),
        labelled: bool = True,
        pipeline: str = "eval",
        crop_size: Sequence[int] | None = None,
        cat_max_ratio: float = 1.0,
        flip_prob: float = 0.5,
        names: Iterable[str] | None = None,
        skip_bad_samples: bool | None = None,
        config_name: str | None = None,
        missing_fix: str | None = None,
    ):
        if pipeline not in ("train", "eval"):
            raise ValueError(f"pipeline must be 'train' or 'eval', got {pipeline!r}")
        if not labelled and cat_max_ratio < 1.0:
            raise ValueError(
                f"{type(self).__name__}({root}): cat_max_ratio={cat_max_ratio} needs ground-truth labels, but this "
                "stream is unlabelled (target training never loads labels, spec §14 #13); use 1.0"
            )
        self.root = Path(root)
        self.split = split
        self.scale = tuple(int(s) for s in scale)
        self.labelled = labelled
        self.pipeline = pipeline
        self.crop_size = tuple(int(s) for s in crop_size) if crop_size is not None else None
        self.cat_max_ratio = float(cat_max_ratio)
        self.flip_prob = float(flip_prob)
        self.skip_bad_samples = (pipeline == "train") if skip_bad_samples is None else skip_bad_samples
        self.config_name = config_name
        self.missing_fix = missing_fix
        self.skipped: dict[str, str] = {}  # path → reason, per process (each worker keeps its own)
        self.resized_labels: set[str] = set()
        self._wanted_names = list(names) if names is not None else None
        self._samples: list[SampleFiles] | None = None
        if pipeline == "train":
            self.transform = build_train_transform(
                self.scale, self.crop_size, self.cat_max_ratio, self.flip_prob
            )
        else:
            self.transform = build_eval_transform(self.scale)

    # ----------------------------------------------------------------- layout (subclasses declare it)
    #: Image file names end with this; the part before it is the sample's base name.
    image_suffix: ClassVar[str] = ".png"
    #: ``<base><label_suffix>``: the train-id label of an image (preferred when present).
    label_suffix: ClassVar[str] = "_labelTrainIds.png"
    #: ``<base><raw_label_suffix>``: the label as the archive ships it (``None``: ships train ids).
    raw_label_suffix: ClassVar[str | None] = None
    #: Encoding of the raw label files ("cityscapes_ids" | "synthia_ids").
    raw_encoding: ClassVar[str | None] = None
    #: Images sit one level of subfolders (city, sequence) below each image folder.
    nested: ClassVar[bool] = True

    @abstractmethod
    def folder_pairs(self) -> list[tuple[Path, Path]]:
        """``(image folder, label folder)`` of this split, in index order (the layout of a subclass)."""

    def image_dirs(self) -> list[Path]:
        """Folders holding this split's images."""
        return [images for images, _ in self.folder_pairs()]

    def label_dirs(self) -> list[Path]:
        """Folders holding this split's labels."""
        return [labels for _, labels in self.folder_pairs()]

    def required_dirs(self, labelled: bool | None = None) -> list[Path]:
        """Folders that must exist: the image folders, and the label folders when labelled."""
        labelled = self.labelled if labelled is None else labelled
        return self.image_dirs() + (self.label_dirs() if labelled else [])

    def scan(self) -> list[SampleFiles]:
        """All samples of this split found on disk, sorted by name within each folder pair (labels
        looked up, not opened)."""
        raw_suffix = self.raw_label_suffix
        samples = []
        for image_root, label_root in self.folder_pairs():
            groups = sorted(p for p in image_root.iterdir() if p.is_dir()) if self.nested else [image_root]
            for group in groups:
                labels_dir = label_root / group.name if self.nested else label_root
                existing = _listing(labels_dir)
                for image in sorted(group.glob(f"*{self.image_suffix}")):
                    base = image.name[: -len(self.image_suffix)]
                    label, encoding, found = _pick_label(
                        labels_dir,
                        base + self.label_suffix,
                        base + raw_suffix if raw_suffix is not None else None,
                        self.raw_encoding,
                        existing,
                    )
                    name = image.relative_to(self.root).as_posix()
                    samples.append(SampleFiles(name, image, label, encoding, found))
        return samples

    def label_conversions(self) -> list[tuple[Path, Path, str]]:
        """``(raw label, train-id label, raw encoding)`` pairs ``prepare`` should write."""
        raw_suffix = self.raw_label_suffix
        if raw_suffix is None:
            return []
        pattern = f"*/*{raw_suffix}" if self.nested else f"*{raw_suffix}"
        return [
            (raw, raw.with_name(raw.name[: -len(raw_suffix)] + self.label_suffix), self.raw_encoding)
            for label_root in self.label_dirs()
            for raw in sorted(label_root.glob(pattern))
            if not raw.name.endswith(self.label_suffix) and not raw.name.startswith(".")
        ]

    def expected_count(self) -> int | None:
        """Published number of images of this split (``None`` when unknown)."""
        return self.published_counts.get(self.split)

    def inspect_layout(self, labelled: bool | None = None) -> LayoutReport:
        """The one layout check (used by the index, ``atp.data.check`` and ``atp.data.prepare``).

        Checks, in this order: the required folders exist (nothing is scanned otherwise), the split
        has images, the ``names`` filter only lists images of the split, and — when ``labelled``
        (default: this dataset's own setting) — every image has its label file.
        """
        labelled = self.labelled if labelled is None else labelled
        fetch = self.fetch_fix()
        missing = [d for d in self.required_dirs(labelled) if not d.is_dir()]
        if missing:
            return LayoutReport(
                None, [DatasetLayoutError(d, f"{self.display_name} folder is missing", fetch) for d in missing]
            )
        samples = self.scan()
        if not samples:
            problem = f"no {self.display_name} images found for split {self.split!r}"
            return LayoutReport([], [DatasetLayoutError(self.image_dirs()[0], problem, fetch)])
        if self._wanted_names is not None:
            known = {s.name for s in samples}
            unknown = [n for n in self._wanted_names if n not in known]
            if unknown:
                problem = (
                    f"{len(unknown)} listed names are not {self.display_name} {self.split} images, "
                    f"e.g. {unknown[:3]}"
                )
                fix = "regenerate the split files (entropy ranking) for this dataset and data_dir"
                return LayoutReport(samples, [DatasetLayoutError(self.root, problem, fix)])
            wanted = set(self._wanted_names)
            samples = [s for s in samples if s.name in wanted]
        errors = []
        if labelled:
            errors = [
                DatasetLayoutError(s.label, f"label missing for image {s.image}", fetch)
                for s in samples
                if not s.label_found
            ]
        return LayoutReport(samples, errors)

    # ----------------------------------------------------------------- messages
    def check_command(self) -> str:
        return f"python -m atp.data.check dataset={self.config_name or '<name>'}"

    def prepare_command(self) -> str:
        return f"python -m atp.data.prepare dataset={self.config_name or '<name>'}"

    def fetch_fix(self) -> str:
        """What to do when files of the original archives are missing."""
        hint = self.missing_fix or self.download_hint.format(root=self.root)
        return f"{hint}; or point paths.data_dir (env ATP_DATA_DIR) at the folder that holds it"

    # ----------------------------------------------------------------- index
    @property
    def samples(self) -> list[SampleFiles]:
        """The indexed samples (scanned on first use; raises :class:`DatasetLayoutError`)."""
        if self._samples is None:
            self._samples = self._index()
        return self._samples

    def _index(self) -> list[SampleFiles]:
        layout = self.inspect_layout()
        if not layout.errors:
            return layout.samples
        first = layout.errors[0]
        if len(layout.errors) == 1:
            raise first
        more = f"{len(layout.errors) - 1} more like it ({self.check_command()} lists them all)"
        raise DatasetLayoutError(first.path, f"{first.problem}; {more}", first.fix)

    def refresh(self) -> None:
        """Forget the index (e.g. after ``prepare`` wrote train-id labels); the next access rescans."""
        self._samples = None

    @property
    def names(self) -> list[str]:
        """Sample names (image paths relative to the root), in index order."""
        return [s.name for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    # ----------------------------------------------------------------- loading
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decoded RGB image and uint8 train-id label (``None`` when unlabelled), before transforms."""
        sample = self.samples[index]
        image = read_image(sample.image)
        if not self.labelled:
            return image, None
        label = read_label(sample.label, sample.label_encoding, fix=self.check_command())
        if label.shape != image.shape[:2]:
            if not self.allow_label_size_mismatch:
                raise DataFileError(
                    sample.label,
                    f"label size {label.shape[::-1]} differs from image size {image.shape[1::-1]}",
                    self.check_command(),
                )
            if str(sample.label) not in self.resized_labels:
                self.resized_labels.add(str(sample.label))
                log.warning(
                    "%s: label size %s differs from image size %s; resized with nearest (%d so far)",
                    sample.label,
                    label.shape[::-1],
                    image.shape[1::-1],
                    len(self.resized_labels),
                )
            label = cv2.resize(label, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        return image, label

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, index_seed(key))
        for attempt in range(min(MAX_CONSECUTIVE_SKIPS, len(self))):
            current = (index + attempt) % len(self)
            try:
                return self._make_sample(current, seed)
            except DataFileError as err:
                if not self.skip_bad_samples:
                    raise
                self._note_skip(err)
        raise RuntimeError(
            f"{self.display_name} {self.root}: {MAX_CONSECUTIVE_SKIPS} consecutive samples from index {index} are "
            f"unusable (last: {sorted(self.skipped)[-1:]}); run {self.check_command()}"
        )

    def _note_skip(self, err: DataFileError) -> None:
        if err.path not in self.skipped:
            self.skipped[err.path] = err.problem
            log.warning(
                "skipping unusable sample %s: %s (%d skipped so far; see %s)",
                err.path,
                err.problem,
                len(self.skipped),
                self.check_command(),
            )

    def _make_sample(self, index: int, seed: int) -> dict[str, Any]:
        image, label = self.load(index)
        name = self.samples[index].name
        if self.pipeline == "train":
            reseed(self.transform, seed)
            out = (
                self.transform(image=image, mask=label) if label is not None else self.transform(image=image)
            )
            label = out.get("mask") if label is not None else None
        else:
            out = self.transform(image=image)
        sample: dict[str, Any] = {
            "img": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1), dtype=np.float32)),
            "name": name,
            "index": index,
        }
        if label is not None:
            # uint8 (train ids and 255): 8x fewer bytes from the workers than int64; the DataModule
            # widens labels to int64 after the transfer to the device (on_after_batch_transfer)
            sample["label"] = torch.from_numpy(np.ascontiguousarray(label, dtype=np.uint8))
        return sample

    def __repr__(self) -> str:
        kind = "labelled" if self.labelled else "unlabelled"
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, {kind}, {self.pipeline})"
        )


def index_seed(index: int) -> int:
    """Augmentation seed used when a sample is requested by a bare index."""
    return int(np.random.SeedSequence([0x5EED, index]).generate_state(1)[0])


# ===================================================================== layouts
class FlatFolderDataset(SegmentationDataset):
    """Layouts with one image folder and one label folder holding ``<stem>.png`` side by side
    (GTA5, SYNTHIA); subclasses set the two folders and the raw label encoding."""

    image_subdir: ClassVar[str]
    label_subdir: ClassVar[str]
    raw_label_suffix = ".png"
    nested = False

    def folder_pairs(self) -> list[tuple[Path, Path]]:
        return [(self.root / self.image_subdir, self.root / self.label_subdir)]


class GTA5Dataset(FlatFolderDataset):
    """GTA5: ``images/NNNNN.png`` + ``labels/NNNNN.png`` (Cityscapes label ids, palette PNG) or
    ``labels/NNNNN_labelTrainIds.png`` when prepared. One split (``split`` is ignored)."""

    display_name = "GTA5"
    published_counts = {"train": 24966}
    download_hint = (
        "download the GTA5 images and labels (download.visinf.tu-darmstadt.de/data/from_games) into {root}"
    )
    allow_label_size_mismatch = True

    image_subdir = "images"
    label_subdir = "labels"
    raw_encoding = "cityscapes_ids"


class SynthiaDataset(FlatFolderDataset):
    """SYNTHIA-RAND-CITYSCAPES: ``RGB/NNNNNNN.png`` + ``GT/LABELS/NNNNNNN.png`` (16-bit, 3 channels,
    class id in the red channel) or ``GT/LABELS/NNNNNNN_labelTrainIds.png`` when prepared."""

    display_name = "SYNTHIA"
    published_counts = {"train": 9400}
    download_hint = (
        "download SYNTHIA-RAND-CITYSCAPES (synthia-dataset.net) so that {root}/RGB and {root}/GT/LABELS exist"
    )

    image_subdir = "RGB"
    label_subdir = "GT/LABELS"
    raw_encoding = "synthia_ids"


class CityscapesDataset(SegmentationDataset):
    """Cityscapes: ``leftImg8bit/<split>/<city>/<base>_leftImg8bit.png`` +
    ``gtFine/<split>/<city>/<base>_gtFine_labelTrainIds.png`` (else ``_gtFine_labelIds.png``).
    ``split=test`` (1,525 images, labels not public) is read unlabelled for the benchmark server."""

    display_name = "Cityscapes"
    published_counts = {"train": 2975, "val": 500, "test": 1525}
    download_hint = "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip (cityscapes-dataset.com) into {root}"

    image_suffix = "_leftImg8bit.png"
    label_suffix = "_gtFine_labelTrainIds.png"
    raw_label_suffix = "_gtFine_labelIds.png"
    raw_encoding = "cityscapes_ids"

    def folder_pairs(self) -> list[tuple[Path, Path]]:
        return [(self.root / "leftImg8bit" / self.split, self.root / "gtFine" / self.split)]


class ConditionDataset(SegmentationDataset):
    """Target datasets structured by weather/light condition, shipping train-id labels:
    ``<image folder>/<seq>/<base>_rgb_anon.png`` + ``<label folder>/<seq>/<base>_gt_labelTrainIds.png``
    for each chosen condition. Subclasses declare the conditions, the two folder patterns
    (``{condition}`` and ``{split}`` are filled in) and the published sizes per condition."""

    #: The conditions this dataset has, and the one used when none is given.
    CONDITIONS: ClassVar[tuple[str, ...]]
    default_condition: ClassVar[str] = "night"
    image_pattern: ClassVar[str]
    label_pattern: ClassVar[str]
    #: Published images per split and condition, for ``check``.
    counts_per_condition: ClassVar[dict[str, dict[str, int]]] = {}

    image_suffix = "_rgb_anon.png"
    label_suffix = "_gt_labelTrainIds.png"

    def __init__(self, root: str | os.PathLike, condition: str | Sequence[str] | None = None, **kwargs: Any):
        if condition is None:
            condition = self.default_condition
        conditions = [condition] if isinstance(condition, str) else list(condition)
        unknown = [c for c in conditions if c not in self.CONDITIONS]
        if unknown or not conditions:
            raise ValueError(
                f"unknown {self.display_name} condition(s) {unknown or conditions}; "
                f"choose from {', '.join(self.CONDITIONS)}"
            )
        self.conditions = conditions
        super().__init__(root, **kwargs)

    def folder_pairs(self) -> list[tuple[Path, Path]]:
        return [
            (
                self.root / self.image_pattern.format(condition=c, split=self.split),
                self.root / self.label_pattern.format(condition=c, split=self.split),
            )
            for c in self.conditions
        ]

    def expected_count(self) -> int | None:
        """Published number of images of this split over the chosen conditions."""
        per = self.counts_per_condition.get(self.split)
        return None if per is None else sum(per[c] for c in self.conditions)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", conditions={self.conditions})"


class ACDCDataset(ConditionDataset):
    """ACDC: ``rgb_anon/<cond>/<split>/<seq>/<base>_rgb_anon.png`` +
    ``gt/<cond>/<split>/<seq>/<base>_gt_labelTrainIds.png``, one or several conditions
    (``split=test``: 500 images per condition, no public labels)."""

    display_name = "ACDC"
    download_hint = (
        "download rgb_anon_trainvaltest.zip and gt_trainval.zip (acdc.vision.ee.ethz.ch) into {root}"
    )
    CONDITIONS = ("fog", "night", "rain", "snow")
    image_pattern = "rgb_anon/{condition}/{split}"
    label_pattern = "gt/{condition}/{split}"
    counts_per_condition = {
        "train": {"fog": 400, "night": 400, "rain": 400, "snow": 400},
        "val": {"fog": 100, "night": 106, "rain": 100, "snow": 100},
        "test": {"fog": 500, "night": 500, "rain": 500, "snow": 500},
    }


class DarkZurichDataset(ConditionDataset):
    """Dark Zurich (night): ``rgb_anon/<split>/night/<seq>/<base>_rgb_anon.png`` +
    ``gt/val/night/<seq>/<base>_gt_labelTrainIds.png`` (labels exist for val only;
    ``split=test``: 151 images in ``rgb_anon/test/night/<seq>/``)."""

    display_name = "Dark Zurich"
    download_hint = (
        "download Dark_Zurich_train_anon.zip, Dark_Zurich_val_anon.zip (and Dark_Zurich_test_anon.zip for the "
        "benchmark server) (trace.ethz.ch) into {root}"
    )
    CONDITIONS = ("night",)
    image_pattern = "rgb_anon/{split}/{condition}"
    label_pattern = "gt/{split}/{condition}"
    counts_per_condition = {"train": {"night": 2416}, "val": {"night": 50}, "test": {"night": 151}}
