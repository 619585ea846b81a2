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

    # ----------------------------------------------------------------- layout (subclasses)
    @abstractmethod
    def image_dirs(self) -> list[Path]:
        """Folders holding this split's images."""

    @abstractmethod
    def label_dirs(self) -> list[Path]:
        """Folders holding this split's labels."""

    def required_dirs(self) -> list[Path]:
        """Folders that must exist: the image folders, and the label folders when labelled."""
        return self.image_dirs() + (self.label_dirs() if self.labelled else [])

    @abstractmethod
    def scan(self) -> list[SampleFiles]:
        """All samples of this split found on disk, sorted by name (labels looked up, not opened)."""

    def label_conversions(self) -> list[tuple[Path, Path, str]]:
        """``(raw label, train-id label, raw encoding)`` pairs ``prepare`` should write."""
        return []

    def expected_count(self) -> int | None:
        """Published number of images of this split (``None`` when unknown)."""
        return self.published_counts.get(self.split)

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
        for folder in self.required_dirs():
            if not folder.is_dir():
                raise DatasetLayoutError(folder, f"{self.display_name} folder is missing", self.fetch_fix())
        samples = self.scan()
        if not samples:
            raise DatasetLayoutError(
                self.image_dirs()[0],
                f"no {self.display_name} images found for split {self.split!r}",
                self.fetch_fix(),
            )
        if self._wanted_names is not None:
            by_name = {s.name: s for s in samples}
            unknown = [n for n in self._wanted_names if n not in by_name]
            if unknown:
                raise DatasetLayoutError(
                    self.root,
                    f"{len(unknown)} listed names are not {self.display_name} {self.split} images, e.g. {unknown[:3]}",
                    "regenerate the split files (entropy ranking) for this dataset and data_dir",
                )
            wanted = set(self._wanted_names)
            samples = [s for s in samples if s.name in wanted]
        if self.labelled:
            missing = [s for s in samples if not s.label_found]
            if missing:
                raise DatasetLayoutError(
                    missing[0].label,
                    f"label file missing ({len(missing)} of {len(samples)} {self.display_name} {self.split} samples)",
                    f"{self.check_command()} lists them; {self.fetch_fix()}",
                )
        return samples

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
            sample["label"] = torch.from_numpy(label.astype(np.int64))
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

    image_subdir: str
    label_subdir: str
    raw_encoding: str

    def image_dirs(self) -> list[Path]:
        return [self.root / self.image_subdir]

    def label_dirs(self) -> list[Path]:
        return [self.root / self.label_subdir]

    def scan(self) -> list[SampleFiles]:
        labels_dir = self.root / self.label_subdir
        existing = _listing(labels_dir)
        samples = []
        for image in sorted((self.root / self.image_subdir).glob("*.png")):
            label, encoding, found = _pick_label(
                labels_dir, f"{image.stem}_labelTrainIds.png", image.name, self.raw_encoding, existing
            )
            samples.append(SampleFiles(f"{self.image_subdir}/{image.name}", image, label, encoding, found))
        return samples

    def label_conversions(self) -> list[tuple[Path, Path, str]]:
        labels_dir = self.root / self.label_subdir
        return [
            (raw, labels_dir / f"{raw.stem}_labelTrainIds.png", self.raw_encoding)
            for raw in sorted(labels_dir.glob("*.png"))
            if not raw.name.endswith("_labelTrainIds.png") and not raw.name.startswith(".")
        ]


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
    ``gtFine/<split>/<city>/<base>_gtFine_labelTrainIds.png`` (else ``_gtFine_labelIds.png``)."""

    display_name = "Cityscapes"
    published_counts = {"train": 2975, "val": 500}
    download_hint = "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip (cityscapes-dataset.com) into {root}"

    def image_dirs(self) -> list[Path]:
        return [self.root / "leftImg8bit" / self.split]

    def label_dirs(self) -> list[Path]:
        return [self.root / "gtFine" / self.split]

    def scan(self) -> list[SampleFiles]:
        samples = []
        for city_dir in sorted(p for p in (self.root / "leftImg8bit" / self.split).iterdir() if p.is_dir()):
            labels_dir = self.root / "gtFine" / self.split / city_dir.name
            existing = _listing(labels_dir)
            for image in sorted(city_dir.glob("*_leftImg8bit.png")):
                base = image.name[: -len("_leftImg8bit.png")]
                label, encoding, found = _pick_label(
                    labels_dir,
                    f"{base}_gtFine_labelTrainIds.png",
                    f"{base}_gtFine_labelIds.png",
                    "cityscapes_ids",
                    existing,
                )
                name = f"leftImg8bit/{self.split}/{city_dir.name}/{image.name}"
                samples.append(SampleFiles(name, image, label, encoding, found))
        return samples

    def label_conversions(self) -> list[tuple[Path, Path, str]]:
        gt = self.root / "gtFine" / self.split
        return [
            (
                raw,
                raw.with_name(raw.name.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")),
                "cityscapes_ids",
            )
            for raw in sorted(gt.glob("*/*_gtFine_labelIds.png"))
        ]


ACDC_CONDITIONS = ("fog", "night", "rain", "snow")


class ACDCDataset(SegmentationDataset):
    """ACDC: ``rgb_anon/<cond>/<split>/<seq>/<base>_rgb_anon.png`` +
    ``gt/<cond>/<split>/<seq>/<base>_gt_labelTrainIds.png``, one or several conditions."""

    display_name = "ACDC"
    published_counts = {"train": 400, "val": 100}  # per condition; night val has 106
    download_hint = (
        "download rgb_anon_trainvaltest.zip and gt_trainval.zip (acdc.vision.ee.ethz.ch) into {root}"
    )

    def __init__(self, root: str | os.PathLike, condition: str | Sequence[str] = "night", **kwargs: Any):
        conditions = [condition] if isinstance(condition, str) else list(condition)
        unknown = [c for c in conditions if c not in ACDC_CONDITIONS]
        if unknown or not conditions:
            raise ValueError(
                f"unknown ACDC condition(s) {unknown or conditions}; choose from {', '.join(ACDC_CONDITIONS)}"
            )
        self.conditions = conditions
        super().__init__(root, **kwargs)

    def expected_count(self) -> int | None:
        """Published number of images of this split over the chosen conditions."""
        per = {
            "train": dict.fromkeys(ACDC_CONDITIONS, 400),
            "val": {**dict.fromkeys(ACDC_CONDITIONS, 100), "night": 106},
        }
        if self.split not in per:
            return None
        return sum(per[self.split][c] for c in self.conditions)

    def _image_dir(self, condition: str) -> Path:
        return self.root / "rgb_anon" / condition / self.split

    def _label_dir(self, condition: str) -> Path:
        return self.root / "gt" / condition / self.split

    def image_dirs(self) -> list[Path]:
        return [self._image_dir(c) for c in self.conditions]

    def label_dirs(self) -> list[Path]:
        return [self._label_dir(c) for c in self.conditions]

    def scan(self) -> list[SampleFiles]:
        samples = []
        for condition in self.conditions:
            image_dir = self._image_dir(condition)
            for seq_dir in sorted(p for p in image_dir.iterdir() if p.is_dir()):
                labels_dir = self._label_dir(condition) / seq_dir.name
                existing = _listing(labels_dir)
                for image in sorted(seq_dir.glob("*_rgb_anon.png")):
                    base = image.name[: -len("_rgb_anon.png")]
                    label, encoding, found = _pick_label(
                        labels_dir, f"{base}_gt_labelTrainIds.png", None, None, existing
                    )
                    name = image.relative_to(self.root).as_posix()
                    samples.append(SampleFiles(name, image, label, encoding, found))
        return samples

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", conditions={self.conditions})"


class DarkZurichDataset(ACDCDataset):
    """Dark Zurich (night): ``rgb_anon/<split>/night/<seq>/<base>_rgb_anon.png`` +
    ``gt/val/night/<seq>/<base>_gt_labelTrainIds.png`` (labels exist for val only)."""

    display_name = "Dark Zurich"
    published_counts = {"train": 2416, "val": 50}
    download_hint = (
        "download Dark_Zurich_train_anon.zip and Dark_Zurich_val_anon.zip (trace.ethz.ch) into {root}"
    )

    def __init__(self, root: str | os.PathLike, **kwargs: Any):
        kwargs.pop("condition", None)
        SegmentationDataset.__init__(self, root, **kwargs)
        self.conditions = ["night"]

    def expected_count(self) -> int | None:
        return self.published_counts.get(self.split)

    def _image_dir(self, condition: str) -> Path:
        return self.root / "rgb_anon" / self.split / condition

    def _label_dir(self, condition: str) -> Path:
        return self.root / "gt" / self.split / condition
