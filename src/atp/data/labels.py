"""Class definitions and label-id → train-id tables (spec §2.1, §2.2, §11).

Everything here is plain numpy so it can be used by the data loaders, the CLIs and the
evaluation code alike.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _cityscapes_labels

IGNORE_INDEX = 255
NUM_CLASSES = 19

_TRAIN_LABELS = sorted(
    (lb for lb in _cityscapes_labels if 0 <= lb.trainId < NUM_CLASSES), key=lambda lb: lb.trainId
)

#: Train-id order names: ``CLASS_NAMES[train_id]``.
CLASS_NAMES: tuple[str, ...] = tuple(lb.name for lb in _TRAIN_LABELS)
#: RGB colour per train id (for visualisation).
PALETTE: tuple[tuple[int, int, int], ...] = tuple(tuple(lb.color) for lb in _TRAIN_LABELS)
_TRAIN_ID_PALETTE = np.zeros((256, 3), dtype=np.uint8)  # train id → colour; 255 and unused ids black
_TRAIN_ID_PALETTE[: len(PALETTE)] = np.asarray(PALETTE, dtype=np.uint8)


def colourise(labels: np.ndarray) -> np.ndarray:
    """Train ids (H, W) → RGB image with the Cityscapes palette (ignore = black)."""
    return _TRAIN_ID_PALETTE[labels.astype(np.uint8)]


#: 256×3 uint8 colour table indexed by Cityscapes label id (the palette of GTA5's indexed label PNGs).
LABEL_ID_PALETTE = np.zeros((256, 3), np.uint8)
for _lb in _cityscapes_labels:
    if _lb.id >= 0:
        LABEL_ID_PALETTE[_lb.id] = _lb.color

#: Cityscapes / GTA5 label id → train id (every id not listed maps to 255).
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {lb.id: lb.trainId for lb in _TRAIN_LABELS}
#: Label ids that appear in Cityscapes/GTA5 ``labelIds`` files (all non-negative ids of the table).
CITYSCAPES_KNOWN_IDS: frozenset[int] = frozenset(lb.id for lb in _cityscapes_labels if lb.id >= 0)

#: SYNTHIA-RAND-CITYSCAPES class id (last channel of ``GT/LABELS``) → train id (DAFormer convention).
SYNTHIA_ID_TO_TRAIN_ID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9,
    1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}  # fmt: skip
#: SYNTHIA class ids 0 (void) … 22 (lanemarking).
SYNTHIA_KNOWN_IDS: frozenset[int] = frozenset(range(23))

#: Values allowed in a ``*_labelTrainIds.png`` file.
TRAIN_IDS: frozenset[int] = frozenset(range(NUM_CLASSES)) | {IGNORE_INDEX}

#: ACDC class frequencies used by the DANNet test-time class prior (spec §11), train-id order.
ACDC_CLASS_FREQUENCIES: tuple[float, ...] = (
    0.36870, 0.06085, 0.22824, 0.00655, 0.00877, 0.01227, 0.00208, 0.00551, 0.15929, 0.01158,
    0.04019, 0.01219, 0.00135, 0.06995, 0.00267, 0.00235, 0.00233, 0.00099, 0.00414,
)  # fmt: skip


def acdc_class_prior_weights(strength: float = 0.16) -> np.ndarray:
    """DANNet class-prior weights ``1 + s·(mean(log f) − log f_c) / std(log f)`` (unbiased std)."""
    log_f = np.log(np.asarray(ACDC_CLASS_FREQUENCIES, dtype=np.float64))
    return (1.0 + strength * (log_f.mean() - log_f) / log_f.std(ddof=1)).astype(np.float32)


def build_lut(id_to_train_id: dict[int, int]) -> np.ndarray:
    """A 65,536-entry uint8 lookup table: ``lut[raw_id]`` is the train id (255 where unmapped)."""
    lut = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    for raw, train in id_to_train_id.items():
        lut[raw] = train
    return lut


def build_validity_lut(allowed: frozenset[int]) -> np.ndarray:
    """A 65,536-entry bool table, True where a raw value is allowed in a label file."""
    valid = np.zeros(65536, dtype=bool)
    valid[list(allowed)] = True
    return valid


CITYSCAPES_LUT = build_lut(CITYSCAPES_ID_TO_TRAIN_ID)
SYNTHIA_LUT = build_lut(SYNTHIA_ID_TO_TRAIN_ID)
IDENTITY_LUT = build_lut({i: i for i in range(NUM_CLASSES)})

#: How a label file encodes its classes → (lookup table to train ids, allowed raw values).
LABEL_ENCODINGS: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "train_ids": (IDENTITY_LUT, build_validity_lut(TRAIN_IDS)),
    "cityscapes_ids": (CITYSCAPES_LUT, build_validity_lut(CITYSCAPES_KNOWN_IDS)),
    "synthia_ids": (SYNTHIA_LUT, build_validity_lut(SYNTHIA_KNOWN_IDS)),
}


def to_train_ids(raw: np.ndarray, encoding: str) -> np.ndarray:
    """Map a raw label array to uint8 train ids (values outside the table become 255)."""
    lut, _ = LABEL_ENCODINGS[encoding]
    return lut[raw]


def invalid_label_values(raw: np.ndarray, encoding: str) -> list[int]:
    """Sorted values of ``raw`` that are not allowed for ``encoding`` (empty list when all are)."""
    _, valid = LABEL_ENCODINGS[encoding]
    if valid[raw].all():
        return []
    values = np.unique(raw)
    return [int(v) for v in values if not valid[v]]
