"""Data layer: label tables, dataset classes, pipelines, the DataModule, prepare/check CLIs, toy data.

Attributes are imported lazily so that light users (``atp.data.labels``, the CLIs' worker
processes) do not pay for importing torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IGNORE_INDEX": "labels",
    "NUM_CLASSES": "labels",
    "CLASS_NAMES": "labels",
    "PALETTE": "labels",
    "ACDC_CLASS_FREQUENCIES": "labels",
    "acdc_class_prior_weights": "labels",
    "SegmentationDataset": "datasets",
    "GTA5Dataset": "datasets",
    "SynthiaDataset": "datasets",
    "CityscapesDataset": "datasets",
    "ACDCDataset": "datasets",
    "DarkZurichDataset": "datasets",
    "ConditionDataset": "datasets",
    "DatasetLayoutError": "datasets",
    "InfiniteStreamSampler": "sampler",
    "SegDataModule": "datamodule",
    "build_datamodule": "datamodule",
    "collate_samples": "datamodule",
    "read_split": "splits",
    "labels_to_int64": "datamodule",
    "Problem": "check",
    "check_dataset": "check",
    "prepare_dataset": "prepare",
    "generate_toy": "toy",
    "ensure_toy_data": "toy",
    "rescale_size": "transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"atp.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'atp.data' has no attribute {name!r}")
