"""Dataset classes on tiny trees in the official layouts and encodings."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from atp.data.datasets import (
    ACDCDataset,
    CityscapesDataset,
    DarkZurichDataset,
    GTA5Dataset,
    SynthiaDataset,
)
from atp.data.io import write_png_atomic
from atp.data.transforms import MEAN, STD
from atp.errors import DataFileError, DatasetLayoutError
from tests.helpers.data_trees import FIXTURE_COLOURS, fixture_train_ids


def assert_image_matches_label(sample: dict) -> None:
    """Every labelled pixel has its class's flat fixture colour (crops, flips and pads keep this)."""
    rgb = sample["img"].permute(1, 2, 0).numpy() * np.array(STD) + np.array(MEAN)
    label = sample["label"].numpy()
    assert label.dtype == np.uint8 and sample["img"].dtype == torch.float32  # widened on the device
    assert set(np.unique(label)) <= set(FIXTURE_COLOURS)
    for train_id, colour in FIXTURE_COLOURS.items():
        np.testing.assert_allclose(
            rgb[label == train_id], np.broadcast_to(colour, rgb[label == train_id].shape), atol=0.01
        )


def test_gta5_palette_labels_and_size_mismatch(data_fixture_root, caplog):
    ds = GTA5Dataset(data_fixture_root / "gta", scale=(64, 32))
    assert ds.names == [f"images/{i:05d}.png" for i in range(1, 5)]
    sample = ds[0]
    assert sample["name"] == "images/00001.png" and sample["index"] == 0
    assert (sample["label"].numpy() == fixture_train_ids(1)).all()
    assert sample["img"].shape == (3, 32, 64)
    with caplog.at_level(logging.WARNING):
        mismatched = ds[1]  # 00002: label is 66×34, resized with nearest
    assert mismatched["label"].shape == (32, 64) and len(ds.resized_labels) == 1
    assert "differs from image size" in caplog.text


def test_synthia_16bit_labels(data_fixture_root):
    ds = SynthiaDataset(data_fixture_root / "synthia", scale=(64, 32))
    assert ds.names[0] == "RGB/0000000.png" and ds.samples[0].label_encoding == "synthia_ids"
    for i in range(len(ds)):
        assert (ds[i]["label"].numpy() == fixture_train_ids(i)).all()


def test_cityscapes_eval_keeps_labels_at_original_size(data_fixture_root):
    ds = CityscapesDataset(data_fixture_root / "cityscapes", split="val", scale=(128, 64))
    sample = ds[0]
    assert sample["name"] == "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"
    assert sample["img"].shape == (3, 64, 128) and sample["label"].shape == (32, 64)
    assert (sample["label"].numpy() == fixture_train_ids(100)).all()


def test_train_pipeline_keeps_image_and_label_aligned(data_fixture_root):
    ds = CityscapesDataset(
        data_fixture_root / "cityscapes",
        split="train",
        scale=(64, 32),
        pipeline="train",
        crop_size=(16, 24),
        cat_max_ratio=0.75,
    )
    for key in [(i, seed) for i in range(len(ds)) for seed in range(3)]:
        sample = ds[key]
        assert sample["img"].shape == (3, 16, 24) and sample["label"].shape == (16, 24)
        assert_image_matches_label(sample)
    assert torch.equal(ds[(0, 7)]["img"], ds[(0, 7)]["img"])  # the augmentation is a function of the seed


def test_prepared_train_ids_are_preferred(data_fixture_copy):
    root = data_fixture_copy / "gta"
    write_png_atomic(root / "labels" / "00001_labelTrainIds.png", fixture_train_ids(1))
    ds = GTA5Dataset(root, scale=(64, 32))
    assert (
        ds.samples[0].label.name == "00001_labelTrainIds.png" and ds.samples[0].label_encoding == "train_ids"
    )
    assert ds.samples[1].label_encoding == "cityscapes_ids"
    assert (ds[0]["label"].numpy() == fixture_train_ids(1)).all()


def test_unlabelled_streams_never_open_labels(data_fixture_copy):
    root = data_fixture_copy / "acdc"
    for label in root.glob("gt/night/train/*/*.png"):
        label.write_bytes(b"not a png")  # would fail if opened
    ds = ACDCDataset(
        root, condition="night", split="train", labelled=False, pipeline="train", crop_size=(16, 16)
    )
    batch = [ds[(i, 0)] for i in range(len(ds))]
    assert all("label" not in s for s in batch) and not ds.skipped
    with pytest.raises(ValueError, match="needs ground-truth labels"):
        ACDCDataset(root, condition="night", labelled=False, pipeline="train", cat_max_ratio=0.75)


def test_acdc_conditions(data_fixture_root):
    both = ACDCDataset(data_fixture_root / "acdc", condition=["night", "fog"], split="val")
    night = ACDCDataset(data_fixture_root / "acdc", condition="night", split="val")
    assert len(both) == 4 and len(night) == 2
    assert night.names[0].startswith("rgb_anon/night/val/") and night.names[0].endswith("_rgb_anon.png")
    assert night[0]["label"].shape == (32, 64)
    with pytest.raises(ValueError, match="fog, night, rain, snow"):
        ACDCDataset(data_fixture_root / "acdc", condition="dusk")


def test_dark_zurich_layout(data_fixture_root):
    train = DarkZurichDataset(data_fixture_root / "dark_zurich", split="train", labelled=False)
    val = DarkZurichDataset(data_fixture_root / "dark_zurich", split="val")
    assert len(train) == 4 and len(val) == 2
    assert val.names[0] == "rgb_anon/val/night/GOPR0356/GOPR0356_frame_000000_rgb_anon.png"
    assert (val[0]["label"].numpy() == fixture_train_ids(250)).all()
    with pytest.raises(DatasetLayoutError, match="gt/train/night: Dark Zurich folder is missing"):
        len(DarkZurichDataset(data_fixture_root / "dark_zurich", split="train"))  # no train labels


def test_missing_folder_names_path_and_fix(tmp_path):
    ds = CityscapesDataset(tmp_path / "nowhere", split="train", config_name="gta2cs")
    with pytest.raises(DatasetLayoutError) as err:
        len(ds)
    assert "nowhere/leftImg8bit/train" in str(err.value) and "cityscapes-dataset.com" in str(err.value)


def test_unusable_samples_are_skipped_in_training_only(data_fixture_copy, caplog):
    root = data_fixture_copy / "cityscapes"
    ds = CityscapesDataset(root, split="train", scale=(64, 32), pipeline="train", crop_size=(16, 16))
    first = ds.samples[0]
    first.image.write_bytes(first.image.read_bytes()[:60])  # truncated PNG
    write_png_atomic(ds.samples[1].label, np.full((32, 64), 99, np.uint8))  # 99 is not a label id
    with caplog.at_level(logging.WARNING):
        sample = ds[(0, 0)]
    assert sample["index"] == 2  # deterministically the next usable sample
    assert set(ds.skipped) == {str(first.image), str(ds.samples[1].label)}
    assert "skipping unusable sample" in caplog.text
    evaluation = CityscapesDataset(root, split="train", scale=(64, 32))
    with pytest.raises(DataFileError, match=first.image.name):
        evaluation[0]
    with pytest.raises(DataFileError, match="outside the cityscapes_ids table"):
        evaluation[1]


def test_split_names_filter(data_fixture_root):
    full = CityscapesDataset(data_fixture_root / "cityscapes", split="train", labelled=False)
    subset = CityscapesDataset(
        data_fixture_root / "cityscapes", split="train", labelled=False, names=full.names[2:4]
    )
    assert subset.names == full.names[2:4]
    with pytest.raises(DatasetLayoutError, match="not Cityscapes train images"):
        len(
            CityscapesDataset(
                data_fixture_root / "cityscapes", split="train", labelled=False, names=["x.png"]
            )
        )


# The file lists (name, label, label encoding, label found) the layouts produced before they shared
# one scan; written out by hand from the fixture trees (tests/helpers/data_trees.py), in index order.
def _cs(split, city, i):
    return f"leftImg8bit/{split}/{city}/{city}_{i:06d}_000019_leftImg8bit.png"


def _cs_label(split, city, i):
    return f"cityscapes/gtFine/{split}/{city}/{city}_{i:06d}_000019_gtFine_labelIds.png"


def _cond(prefix, seq, i):
    return f"{prefix}/{seq}/{seq}_frame_{i:06d}"


EXPECTED_FILES = {
    "gta": [(f"images/{i:05d}.png", f"gta/labels/{i:05d}.png", "cityscapes_ids", True) for i in (1, 2, 3, 4)],
    "synthia": [
        (f"RGB/{i:07d}.png", f"synthia/GT/LABELS/{i:07d}.png", "synthia_ids", True) for i in (0, 1, 2)
    ],
    "cityscapes_train": [
        (_cs("train", city, i), _cs_label("train", city, i), "cityscapes_ids", True)
        for city, i in (("aachen", 0), ("aachen", 2), ("aachen", 4), ("bremen", 1), ("bremen", 3), ("bremen", 5))
    ],
    # conditions in the order given, sequences and frames sorted within each
    "acdc_night_fog_train": [
        (
            _cond(f"rgb_anon/{cond}/train", f"GOPR{c:02d}{i % 2:02d}", i) + "_rgb_anon.png",
            _cond(f"acdc/gt/{cond}/train", f"GOPR{c:02d}{i % 2:02d}", i) + "_gt_labelTrainIds.png",
            "train_ids",
            True,
        )
        for cond, c in (("night", 0), ("fog", 1))
        for i in (0, 2, 1, 3)
    ],
    "dark_zurich_train": [
        (
            _cond("rgb_anon/train/night", "GOPR0356", i) + "_rgb_anon.png",
            _cond("dark_zurich/gt/train/night", "GOPR0356", i) + "_gt_labelTrainIds.png",
            "train_ids",
            False,  # Dark Zurich ships no train labels
        )
        for i in range(4)
    ],
    "dark_zurich_val": [
        (
            _cond("rgb_anon/val/night", "GOPR0356", i) + "_rgb_anon.png",
            _cond("dark_zurich/gt/val/night", "GOPR0356", i) + "_gt_labelTrainIds.png",
            "train_ids",
            True,
        )
        for i in range(2)
    ],
}


def test_file_lists_of_every_layout(data_fixture_root):
    root = data_fixture_root
    datasets = {
        "gta": GTA5Dataset(root / "gta"),
        "synthia": SynthiaDataset(root / "synthia"),
        "cityscapes_train": CityscapesDataset(root / "cityscapes", split="train"),
        "acdc_night_fog_train": ACDCDataset(root / "acdc", condition=["night", "fog"], split="train"),
        "dark_zurich_train": DarkZurichDataset(root / "dark_zurich", split="train", labelled=False),
        "dark_zurich_val": DarkZurichDataset(root / "dark_zurich", split="val"),
    }
    for key, ds in datasets.items():
        found = [
            (s.name, s.label.relative_to(root).as_posix(), s.label_encoding, s.label_found) for s in ds.scan()
        ]
        assert found == EXPECTED_FILES[key], key
        assert ds.names == [name for name, *_ in EXPECTED_FILES[key]], key


def test_label_conversions_pair_raw_and_train_id_files(data_fixture_root):
    root = data_fixture_root
    gta = [(a.name, b.name, e) for a, b, e in GTA5Dataset(root / "gta").label_conversions()]
    assert gta == [(f"{i:05d}.png", f"{i:05d}_labelTrainIds.png", "cityscapes_ids") for i in (1, 2, 3, 4)]
    cs = CityscapesDataset(root / "cityscapes", split="val").label_conversions()
    assert [(a.name, b.name) for a, b, _ in cs] == [
        (f"frankfurt_{i:06d}_000019_gtFine_labelIds.png", f"frankfurt_{i:06d}_000019_gtFine_labelTrainIds.png")
        for i in (0, 1)
    ]
    assert ACDCDataset(root / "acdc").label_conversions() == []  # ships train ids


def test_condition_datasets_share_one_base(data_fixture_root):
    from atp.data.datasets import ConditionDataset

    assert not issubclass(DarkZurichDataset, ACDCDataset) and issubclass(DarkZurichDataset, ConditionDataset)
    dz = DarkZurichDataset(data_fixture_root / "dark_zurich", split="val")
    assert dz.conditions == ["night"] and dz.expected_count() == 50
    assert ACDCDataset(data_fixture_root / "acdc", condition=["night", "fog"], split="val").expected_count() == 206
    with pytest.raises(ValueError, match="Dark Zurich condition.*choose from night"):
        DarkZurichDataset(data_fixture_root / "dark_zurich", condition="fog")


def test_one_layout_check_lists_every_missing_label(data_fixture_copy):
    root = data_fixture_copy / "acdc"
    for frame in ("GOPR0000/GOPR0000_frame_000000", "GOPR0001/GOPR0001_frame_000001"):
        (root / "gt/night/val" / f"{frame}_gt_labelTrainIds.png").unlink()
    ds = ACDCDataset(root, condition="night", split="val", config_name="cs2acdc_night")
    layout = ds.inspect_layout()
    assert len(layout.samples) == 2 and [e.path for e in layout.errors] == [
        str(root / "gt/night/val/GOPR0000/GOPR0000_frame_000000_gt_labelTrainIds.png"),
        str(root / "gt/night/val/GOPR0001/GOPR0001_frame_000001_gt_labelTrainIds.png"),
    ]
    assert ds.inspect_layout(labelled=False).errors == []  # target training never needs labels
    with pytest.raises(DatasetLayoutError) as err:
        len(ds)  # the index raises the first, counting the rest
    message = str(err.value)
    assert message.startswith(layout.errors[0].path + ": label missing for image")
    assert "1 more like it (python -m atp.data.check dataset=cs2acdc_night lists them all)" in message
    assert "acdc.vision.ee.ethz.ch" in message
