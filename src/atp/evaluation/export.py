"""Benchmark-server submissions: predictions at the original resolution, encoded, named and zipped
as each server's submission instructions say (``python -m atp.evaluate ... export=<server>``).

=============  ==========================  ===============================================================
server         encoding                    files in the zip
=============  ==========================  ===============================================================
``cityscapes`` label ids (not train ids)   ``<city>/<city>_<seq>_<frame>_leftImg8bit.png``, 2048×1024; the
                                           server matches ``<city>_<seq>_<frame>*.png`` anywhere in the zip
``acdc``       train ids                   ``<seq>_frame_<n>_rgb_anon.png`` (the input image's name),
                                           1920×1080
``darkzurich`` train ids                   ``labelTrainIds/``, ``labelTrainIds_invalid/`` (the same maps: no
                                           pixel declared invalid) and ``confidence/`` (uint16, 65535 = 1.0),
                                           each holding ``<seq>_frame_<n>_rgb_anon.png``, 1920×1080
=============  ==========================  ===============================================================

docs/usage.md (benchmark-server submissions) cites the servers' instructions. Every PNG goes through :func:`atp.data.io.write_png_atomic`.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from atp.data.datamodule import collate_samples
from atp.data.datasets import ACDCDataset, CityscapesDataset, DarkZurichDataset, SegmentationDataset
from atp.data.io import write_png_atomic
from atp.data.labels import CITYSCAPES_ID_TO_TRAIN_ID
from atp.errors import UserError
from atp.evaluation.inference import segment_probs
from atp.progress import tracked

#: ``TRAIN_ID_TO_LABEL_ID[train_id]`` is the Cityscapes label id (0 "unlabeled" for 255 and unused values).
TRAIN_ID_TO_LABEL_ID = np.zeros(256, np.uint8)
for _label_id, _train_id in CITYSCAPES_ID_TO_TRAIN_ID.items():
    TRAIN_ID_TO_LABEL_ID[_train_id] = _label_id


@dataclass(frozen=True)
class ServerFormat:
    """How one benchmark server wants its submission."""

    name: str
    dataset_class: type[SegmentationDataset]
    label_ids: bool  # True: Cityscapes label ids; False: train ids 0..18
    label_dirs: tuple[str, ...]  # folders (inside the zip) that each get the label map ("" = zip root)
    confidence_dir: str | None  # folder for uint16 confidence maps, if the server wants them
    keep_folders: bool  # keep the image's sub-folder (city) below the split folder
    rules: str  # where the submission rules are written down

    def relative_name(self, dataset: SegmentationDataset, sample_name: str) -> str:
        """The file's path below a label folder, for the image ``sample_name`` (relative to the dataset root)."""
        path = Path(sample_name)
        if not self.keep_folders:
            return path.name
        for image_dir in dataset.image_dirs():
            try:
                return (dataset.root / path).relative_to(image_dir).as_posix()
            except ValueError:
                continue
        return path.name


SERVER_FORMATS: dict[str, ServerFormat] = {
    "cityscapes": ServerFormat(
        "cityscapes", CityscapesDataset, label_ids=True, label_dirs=("",), confidence_dir=None, keep_folders=True,
        rules="https://github.com/mcordts/cityscapesScripts (evaluation/evalPixelLevelSemanticLabeling.py); "
        "https://www.cityscapes-dataset.com/submit/",
    ),
    "acdc": ServerFormat(
        "acdc", ACDCDataset, label_ids=False, label_dirs=("",), confidence_dir=None, keep_folders=False,
        rules="https://acdc.vision.ee.ethz.ch/submit",
    ),
    "darkzurich": ServerFormat(
        "darkzurich", DarkZurichDataset, label_ids=False, label_dirs=("labelTrainIds", "labelTrainIds_invalid"),
        confidence_dir="confidence", keep_folders=False,
        rules="https://codalab.lisn.upsaclay.fr/competitions/3783",
    ),
}


def server_format(name: str) -> ServerFormat:
    """The :class:`ServerFormat` called ``name`` (a :class:`UserError` listing the valid ones)."""
    if name not in SERVER_FORMATS:
        raise UserError(f"export={name!r} is not a benchmark server; use one of {', '.join(SERVER_FORMATS)}")
    return SERVER_FORMATS[name]


def check_dataset_fits(fmt: ServerFormat, dataset: SegmentationDataset, dataset_name: str) -> None:
    """Stop with one line when the server does not score this dataset (e.g. ``export=acdc dataset=gta2cs``)."""
    if not isinstance(dataset, fmt.dataset_class):
        fitting = [name for name, f in SERVER_FORMATS.items() if isinstance(dataset, f.dataset_class)]
        hint = f"use export={fitting[0]}" if fitting else "no benchmark server scores this dataset"
        raise UserError(
            f"export={fmt.name} takes {fmt.dataset_class.display_name} images, but dataset={dataset_name} "
            f"exports {dataset.display_name} ({type(dataset).__name__}); {hint}"
        )


def encode_prediction(fmt: ServerFormat, train_ids: np.ndarray) -> np.ndarray:
    """The uint8 label map the server reads: train ids, or Cityscapes label ids for ``cityscapes``."""
    train_ids = train_ids.astype(np.uint8)
    return TRAIN_ID_TO_LABEL_ID[train_ids] if fmt.label_ids else train_ids


def write_prediction(
    fmt: ServerFormat, files_dir: Path, relative: str, train_ids: np.ndarray, confidence: np.ndarray | None
) -> list[Path]:
    """Write one image's submission files below ``files_dir``; returns their paths."""
    encoded = encode_prediction(fmt, train_ids)
    written = []
    for folder in fmt.label_dirs:
        path = files_dir / folder / relative
        write_png_atomic(path, encoded)
        written.append(path)
    if fmt.confidence_dir is not None:
        if confidence is None:
            raise ValueError(f"export={fmt.name} needs a confidence map")
        path = files_dir / fmt.confidence_dir / relative
        write_png_atomic(path, np.round(np.clip(confidence, 0.0, 1.0) * 65535).astype(np.uint16))
        written.append(path)
    return written


def original_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of the image file at ``path`` (header only)."""
    with Image.open(path) as image:
        width, height = image.size
    return height, width


def pack_zip(files_dir: Path, zip_path: Path) -> Path:
    """Zip every file below ``files_dir`` (names relative to it), written to a temp file then renamed."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(f".{zip_path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in files_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            archive.write(path, path.relative_to(files_dir).as_posix())
    os.replace(tmp, zip_path)
    return zip_path


def export_predictions(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    fmt: ServerFormat,
    out_dir: Path,
    zip_name: str,
    segment_options: Mapping[str, Any],
    device: torch.device,
    batch_size: int = 1,
    num_workers: int = 0,
    limit_batches: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every image of ``dataset`` at its original size and write the submission.

    ``segment_options`` are :func:`atp.evaluation.inference.segment_probs`'s keyword arguments (mode, crop,
    stride, flip, class prior), the same ``atp.evaluate`` scores with. Files go to
    ``out_dir/submission/``, the archive to ``out_dir/<zip_name>``. Returns a summary dict.
    """
    files_dir = out_dir / "submission"
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_samples)
    images = 0
    with torch.no_grad():
        for index, batch in enumerate(tracked(loader, f"export {fmt.name}", disable=not progress)):
            if limit_batches is not None and index >= limit_batches:
                break
            for b in range(batch["img"].shape[0]):
                sample = dataset.samples[int(batch["index"][b])]
                probs = segment_probs(model, batch["img"][b : b + 1].to(device), original_size(sample.image),
                                      **segment_options)
                confidence, pred = probs.max(dim=1)
                write_prediction(fmt, files_dir, fmt.relative_name(dataset, sample.name),
                                 pred[0].cpu().numpy(), confidence[0].float().cpu().numpy())
                images += 1
    zip_path = pack_zip(files_dir, out_dir / zip_name)
    return {"server": fmt.name, "images": images, "files": str(files_dir), "zip": str(zip_path),
            "rules": fmt.rules}
