"""Label tables, label-file encodings and the albumentations pipelines."""

from __future__ import annotations

import numpy as np
import pytest

from atp.data import labels
from atp.data.io import read_label, read_raw_label, write_png_atomic
from atp.data.transforms import CatMaxRatioCrop, KeepRatioResize, build_train_transform, rescale_size
from atp.errors import BadLabelValuesError, UnreadableFileError


def test_class_table_matches_spec():
    assert labels.NUM_CLASSES == 19 and len(labels.CLASS_NAMES) == 19
    assert labels.CLASS_NAMES[0] == "road" and labels.CLASS_NAMES[18] == "bicycle"
    assert labels.PALETTE[10] == (70, 130, 180)
    spec = {
        7: 0,
        8: 1,
        11: 2,
        12: 3,
        13: 4,
        17: 5,
        19: 6,
        20: 7,
        21: 8,
        22: 9,
        23: 10,
        24: 11,
        25: 12,
        26: 13,
        27: 14,
        28: 15,
        31: 16,
        32: 17,
        33: 18,
    }
    assert labels.CITYSCAPES_ID_TO_TRAIN_ID == spec
    lut = labels.CITYSCAPES_LUT
    assert lut[0] == lut[1] == lut[9] == lut[29] == lut[34] == labels.IGNORE_INDEX
    assert labels.SYNTHIA_LUT[3] == 0 and labels.SYNTHIA_LUT[1] == 10 and labels.SYNTHIA_LUT[13] == 255


def test_acdc_prior_weights_match_spec():
    weights = labels.acdc_class_prior_weights()
    expected = [
        0.693,
        0.854,
        0.736,
        1.052,
        1.026,
        0.996,
        1.154,
        1.067,
        0.768,
        1.001,
        0.891,
        0.997,
        1.192,
        0.841,
        1.132,
        1.143,
        1.144,
        1.220,
        1.093,
    ]
    np.testing.assert_allclose(weights, expected, atol=1.5e-3)


def test_label_values_outside_the_table():
    assert labels.invalid_label_values(np.array([[0, 18, 255]], np.uint8), "train_ids") == []
    assert labels.invalid_label_values(np.array([[0, 19, 200]], np.uint8), "train_ids") == [19, 200]
    assert labels.invalid_label_values(np.array([[33, 40]], np.uint8), "cityscapes_ids") == [40]


def test_label_files_round_trip(tmp_path):
    ids = np.array([[7, 26, 0], [23, 33, 1]], np.uint8)
    write_png_atomic(tmp_path / "palette.png", ids, palette=labels.LABEL_ID_PALETTE)
    assert (read_raw_label(tmp_path / "palette.png", "cityscapes_ids") == ids).all()  # indices, not colours
    assert read_label(tmp_path / "palette.png", "cityscapes_ids").tolist() == [[0, 13, 255], [10, 18, 255]]
    synthia = np.zeros((2, 3, 3), np.uint16)
    synthia[..., 0] = [[3, 8, 0], [1, 11, 21]]  # red channel: class id
    synthia[..., 1] = 1234  # green: instance id
    write_png_atomic(tmp_path / "synthia.png", synthia)
    assert read_label(tmp_path / "synthia.png", "synthia_ids").tolist() == [[0, 13, 255], [10, 18, 3]]
    write_png_atomic(tmp_path / "bad.png", np.array([[0, 77]], np.uint8))
    with pytest.raises(BadLabelValuesError, match="bad.png"):
        read_label(tmp_path / "bad.png", "train_ids")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UnreadableFileError, match="broken.png"):
        read_label(tmp_path / "broken.png", "train_ids")


@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [
        ((1914, 1052), (1280, 720), (1280, 704)),  # GTA
        ((2048, 1024), (1280, 640), (1280, 640)),  # Cityscapes
        ((1920, 1080), (1280, 720), (1280, 720)),  # ACDC
        ((1920, 1080), (1280, 640), (1138, 640)),  # ACDC easy stream of the released P config
        ((1280, 760), (1280, 720), (1213, 720)),  # SYNTHIA with GTA's scale
        ((1280, 760), (1280, 760), (1280, 760)),  # SYNTHIA with its own
    ],
)
def test_rescale_size_follows_mmcv(size, scale, expected):
    assert rescale_size(*size, scale) == expected


def test_keep_ratio_resize_and_cat_max_ratio_crop():
    image = np.zeros((52, 96, 3), np.uint8)
    mask = np.zeros((52, 96), np.uint8)
    out = KeepRatioResize((64, 36))(image=image, mask=mask)
    assert out["image"].shape == (35, 64, 3) and out["mask"].shape == (35, 64)
    # a mask that is one class except a 6×6 block: only crops holding most of the block pass the 0.75 rule
    mask = np.zeros((64, 64), np.uint8)
    mask[40:46, 40:46] = 5
    crop = CatMaxRatioCrop(8, 8, cat_max_ratio=0.75, max_tries=10)
    crop.set_random_seed(0)
    hits = sum(
        len(np.unique(crop(image=np.zeros((64, 64, 3), np.uint8), mask=mask)["mask"])) > 1 for _ in range(50)
    )
    plain = CatMaxRatioCrop(8, 8, cat_max_ratio=1.0)
    plain.set_random_seed(0)
    plain_hits = sum(
        len(np.unique(plain(image=np.zeros((64, 64, 3), np.uint8), mask=mask)["mask"])) > 1 for _ in range(50)
    )
    assert hits > plain_hits


def test_train_transform_pads_small_images_with_ignore():
    transform = build_train_transform(scale=(20, 10), crop_size=(16, 32), flip_prob=0.0)
    out = transform(image=np.full((10, 20, 3), 200, np.uint8), mask=np.zeros((10, 20), np.uint8))
    assert out["image"].shape == (16, 32, 3) and out["mask"].shape == (16, 32)
    assert (out["mask"][10:] == 255).all() and (out["mask"][:, 20:] == 255).all()
    assert (out["image"][10:] == 0).all()  # padded after normalisation: 0 = the mean colour
    np.testing.assert_allclose(
        out["image"][0, 0], (200 - np.array([123.675, 116.28, 103.53])) / [58.395, 57.12, 57.375], rtol=1e-5
    )
