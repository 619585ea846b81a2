"""LightningDataModule for every stage's data streams (spec §2.7).

Modes:

* ``source``    train: labelled source (crop with ``source_cat_max_ratio``); val: target val.
* ``target``    train: unlabelled target train; val: target val.
* ``easy_hard`` train: ``{"easy": loader, "hard": loader}``, two unlabelled target streams whose
  names come from ``split_dir/easy.txt`` and ``split_dir/hard.txt``; val: target val.
* ``predict``   predict: every target-train image, evaluation pipeline, no labels (entropy ranking).

Training loaders are endless (:class:`~atp.data.sampler.InfiniteStreamSampler`): run the Trainer
with ``max_steps``, ``val_check_interval=<steps>`` and ``check_val_every_n_epoch=None``. When a
Trainer is attached, a freshly built training loader starts ``trainer.global_step × batch_size``
samples into its stream, so resuming from a checkpoint continues the stream.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, default_collate

from atp.data.config import as_config, instantiate_entry
from atp.data.datasets import SegmentationDataset
from atp.data.sampler import InfiniteStreamSampler
from atp.data.splits import read_split

log = logging.getLogger(__name__)

MODES = ("source", "target", "easy_hard", "predict")
TRAIN_STREAMS = {"source": ("source",), "target": ("target",), "easy_hard": ("easy", "hard"), "predict": ()}


def collate_samples(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` with a clear message when images or labels differ in size."""
    for key in ("img", "label"):
        shapes = {tuple(s[key].shape) for s in batch if key in s}
        if len(shapes) > 1:
            names = [s["name"] for s in batch]
            raise ValueError(
                f"cannot batch samples whose {key!r} sizes differ ({sorted(shapes)}; {names}); "
                "use val_batch_size=1 for datasets with mixed image sizes"
            )
    return default_collate(batch)


def one_pass_batches(loader: DataLoader) -> int:
    """Batches of ``loader`` that cover every sample of its dataset once (the last one may reach into the
    next epoch); ``len(loader)`` would ask the endless stream sampler."""
    return math.ceil(len(loader.dataset) / loader.batch_size)


def labels_to_int64(batch: Any) -> Any:
    """``batch`` with every ``label`` tensor widened to int64, in nested stream dicts too.

    Workers deliver labels as uint8 (train ids 0–18 and 255: 8× fewer bytes to pickle, pin and copy);
    the losses and metrics take int64, so labels are widened once they are on the device.
    """
    if not isinstance(batch, Mapping):
        return batch
    return {
        key: value.long() if key == "label" and torch.is_tensor(value) else labels_to_int64(value)
        for key, value in batch.items()
    }


class SegDataModule(pl.LightningDataModule):
    """Data streams of one stage; see the module docstring for ``mode``.

    Args:
        dataset: the ``dataset`` config group (``conf/dataset/*.yaml``).
        mode: ``source`` | ``target`` | ``easy_hard`` | ``predict``.
        batch_size: per training stream and process.
        val_batch_size: validation/prediction batch (>1 only when all labels have one size).
        num_workers: DataLoader workers per loader.
        seed: stream seed (permutations and augmentations).
        split_dir: folder holding ``easy.txt`` / ``hard.txt`` (``easy_hard`` mode).
        pin_memory: pin host memory (only when CUDA is available).
        persistent_workers: keep workers alive between validations (when ``num_workers > 0``).
    """

    def __init__(
        self,
        dataset: DictConfig | Mapping[str, Any],
        mode: str,
        batch_size: int = 2,
        val_batch_size: int = 1,
        num_workers: int = 4,
        seed: int = 0,
        split_dir: str | Path | None = None,
        pin_memory: bool = True,
        persistent_workers: bool = True,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown data mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "easy_hard" and split_dir is None:
            raise ValueError("mode='easy_hard' needs split_dir=<folder with easy.txt and hard.txt>")
        self.cfg = as_config(dataset)
        self.mode = mode
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.split_dir = Path(split_dir) if split_dir is not None else None
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self._datasets: dict[str, SegmentationDataset] = {}
        self._samplers: dict[str, InfiniteStreamSampler] = {}
        self._restored_positions: dict[str, int] = {}

    # ------------------------------------------------------------------ config helpers
    @property
    def dataset_name(self) -> str:
        return str(self.cfg.get("name", "<name>"))

    def _loader_crop(self, stream: str) -> tuple[int, int] | None:
        crops = self.cfg.get("loader_crop") or {}
        return tuple(self.cfg.crop_size) if crops.get(stream, True) else None

    def _instantiate(self, key: str, **kwargs: Any) -> SegmentationDataset:
        return instantiate_entry(self.cfg, key, **kwargs)

    def _build(self, stream: str) -> SegmentationDataset:
        flip = float(self.cfg.get("flip_prob", 0.5))
        target_ratio = float(self.cfg.get("target_cat_max_ratio", 1.0))
        train = {"pipeline": "train", "flip_prob": flip}
        if stream == "source":
            return self._instantiate(
                "source",
                labelled=True,
                crop_size=self._loader_crop("source"),
                cat_max_ratio=float(self.cfg.get("source_cat_max_ratio", 0.75)),
                **train,
            )
        if stream == "target":
            return self._instantiate(
                "target",
                labelled=False,
                crop_size=self._loader_crop("target"),
                cat_max_ratio=target_ratio,
                **train,
            )
        if stream in ("easy", "hard"):
            easy, hard = read_split(self.split_dir)
            names = easy if stream == "easy" else hard
            return self._instantiate(
                "target",
                labelled=False,
                crop_size=self._loader_crop(stream),
                cat_max_ratio=target_ratio,
                names=names,
                **train,
            )
        if stream == "val":
            return self._instantiate("target_val", labelled=True, pipeline="eval")
        if stream == "predict":
            return self._instantiate("target", labelled=False, pipeline="eval")
        raise KeyError(stream)

    def dataset(self, stream: str) -> SegmentationDataset:
        """The dataset behind ``stream`` (source/target/easy/hard/val/predict), built once."""
        if stream not in self._datasets:
            self._datasets[stream] = self._build(stream)
        return self._datasets[stream]

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Generate the toy data when the config asks for it and it is missing (rank 0 only)."""
        from atp.data.toy import ensure_toy_data

        ensure_toy_data(self.cfg)

    def setup(self, stage: str | None = None) -> None:
        """Index the datasets of ``stage`` now, so layout errors surface before any worker starts."""
        if stage == "predict" or (stage is None and self.mode == "predict"):
            streams = ["predict"]
        elif stage in ("validate", "test"):
            streams = ["val"]
        else:
            streams = [*TRAIN_STREAMS[self.mode], "val"]
        for stream in streams:
            len(self.dataset(stream))

    def _stream_start(self, stream: str) -> int:
        trainer = self.trainer
        if trainer is not None:
            return int(trainer.global_step) * self.batch_size
        return self._restored_positions.get(stream, 0)

    def _stream_loader(self, stream: str, start: int) -> DataLoader:
        """A seeded, endless loader over ``stream`` from sample ``start`` (its sampler is ``loader.sampler``)."""
        dataset = self.dataset(stream)
        sampler = InfiniteStreamSampler(len(dataset), self.batch_size, self.seed, start=start, stream=stream)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate_samples,
        )

    def _train_loader(self, stream: str) -> DataLoader:
        start = self._stream_start(stream)
        loader = self._stream_loader(stream, start)
        self._samplers[stream] = loader.sampler
        if start:
            log.info("%s stream resumes %d samples in (seed %d)", stream, start, self.seed)
        return loader

    def _eval_loader(self, stream: str) -> DataLoader:
        return DataLoader(
            self.dataset(stream),
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate_samples,
        )

    def statistics_loader(self) -> DataLoader:
        """The target-train stream as the AdaBN stage reads it (training crops, flips and batch size, the
        seeded order from its start; a stage adds its strong augmentation on top): what BatchNorm statistics
        are re-estimated on. The training samplers are left untouched."""
        return self._stream_loader("target", start=0)

    def train_dataloader(self) -> DataLoader | dict[str, DataLoader]:
        streams = TRAIN_STREAMS[self.mode]
        if not streams:
            raise RuntimeError("mode='predict' has no training stream")
        if len(streams) == 1:
            return self._train_loader(streams[0])
        return {stream: self._train_loader(stream) for stream in streams}

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Labels arrive as uint8 and leave as int64 (see :func:`labels_to_int64`)."""
        return labels_to_int64(batch)

    def target_train_names(self) -> list[str]:
        """Names of all target-train images (the order of the predict loader)."""
        return self.dataset("predict").names

    # ------------------------------------------------------------------ resume state
    def state_dict(self) -> dict[str, Any]:
        """Seed and samples consumed per training stream (saved in Lightning checkpoints)."""
        consumed = {}
        for stream in TRAIN_STREAMS[self.mode]:
            if self.trainer is not None:
                consumed[stream] = int(self.trainer.global_step) * self.batch_size
            elif stream in self._samplers:
                consumed[stream] = self._samplers[stream].position
            else:
                consumed[stream] = self._restored_positions.get(stream, 0)
        return {"seed": self.seed, "batch_size": self.batch_size, "samples_consumed": consumed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the seed and stream positions (used when no Trainer is attached)."""
        seed = int(state_dict.get("seed", self.seed))
        if seed != self.seed:
            log.warning("data seed %d from the checkpoint replaces the configured seed %d", seed, self.seed)
            self.seed = seed
        self._restored_positions = {k: int(v) for k, v in state_dict.get("samples_consumed", {}).items()}


def build_datamodule(dataset_cfg: DictConfig | Mapping[str, Any], mode: str, **loader_options: Any) -> SegDataModule:
    """Build the :class:`SegDataModule` of ``mode`` for a ``dataset`` config.

    ``loader_options`` are those of a ``data:`` group (batch_size, val_batch_size, num_workers, seed,
    split_dir, pin_memory, persistent_workers).
    """
    return SegDataModule(dataset_cfg, mode, **loader_options)
