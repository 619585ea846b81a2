"""Benchmark-server export (``atp.evaluate export=...``): encodings, names, sizes, the zip, and the round trip
through ``cityscapesscripts``' own evaluator on a fixture tree in the official Cityscapes layout."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import labels as cs_labels
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from atp.errors import UserError
from atp.evaluate import evaluate, export
from atp.evaluation.export import SERVER_FORMATS, TRAIN_ID_TO_LABEL_ID, encode_prediction
from tests.helpers.data_trees import write_acdc, write_cityscapes, write_dark_zurich, write_test_splits
from tests.helpers.stages import CONF_DIR, REPO_ROOT


@pytest.fixture(scope="module")
def data_dir(module_tmp) -> Path:
    root = module_tmp / "export_data"
    write_cityscapes(root / "cityscapes", n_train=0, n_val=3)
    write_acdc(root / "acdc", n_train=0, n_val=1)
    write_dark_zurich(root / "dark_zurich", n_train=0, n_val=1)
    return write_test_splits(root)


@pytest.fixture(scope="module")
def checkpoint(module_tmp) -> Path:
    """Random mitb0_lite weights whose classifier is scaled up, so predictions hold several classes."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=["model=mitb0_lite", "ckpt=unused"])
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    state = model.state_dict()
    state["decode_head.conv_seg.weight"] = state["decode_head.conv_seg.weight"] * 50
    path = module_tmp / "b0_lite.pth"
    torch.save(state, path)
    return path


def _cfg(ckpt: Path, data_dir: Path, out: Path, dataset: str, *overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("evaluate", overrides=[
            f"ckpt={ckpt}", "model=mitb0_lite", f"dataset={dataset}", f"paths.data_dir={data_dir}",
            "dataset.target_val.scale=[64,32]", "dataset.target_test.scale=[64,32]", "data.num_workers=0",
            "data.val_batch_size=1", "device=cpu", f"output_dir={out}", "num_vis=1", *overrides,
        ])


def test_train_ids_map_to_the_cityscapes_label_ids():
    expected = {lb.trainId: lb.id for lb in cs_labels if 0 <= lb.trainId < 19}
    assert len(expected) == 19
    for train_id, label_id in expected.items():
        assert TRAIN_ID_TO_LABEL_ID[train_id] == label_id
    train_ids = np.array([[0, 13], [18, 10]], np.uint8)
    assert encode_prediction(SERVER_FORMATS["cityscapes"], train_ids).tolist() == [[7, 26], [33, 23]]
    assert encode_prediction(SERVER_FORMATS["acdc"], train_ids).tolist() == train_ids.tolist()


def _cityscapes_score(submission: Path, gt_root: Path) -> tuple[float, dict]:
    """mIoU (%) of the PNGs in ``submission`` by cityscapesscripts' evaluator, matched as the server does."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    args = copy.copy(cs_eval.args)
    args.evalInstLevelScore = False  # needs *_instanceIds.png, which the fixture does not have
    args.JSONOutput, args.quiet = False, True
    args.predictionPath, args.predictionWalk = str(submission), None
    ground_truth = sorted(str(p) for p in gt_root.rglob("*_gtFine_labelIds.png"))
    predictions = [cs_eval.getPrediction(args, gt) for gt in ground_truth]
    result = cs_eval.evaluateImgLists(predictions, ground_truth, args)
    return 100 * result["averageScoreClasses"], result["classScores"]


@pytest.mark.slow
def test_cityscapes_export_round_trip_matches_atp_evaluate(checkpoint, data_dir, tmp_path):
    scored = evaluate(_cfg(checkpoint, data_dir, tmp_path / "eval", "gta2cs"), tmp_path / "eval", progress=False)
    out = tmp_path / "export"
    summary = export(_cfg(checkpoint, data_dir, out, "gta2cs", "export=cityscapes", "export_split=val"), out,
                     progress=False)
    assert summary["images"] == 3
    with zipfile.ZipFile(summary["zip"]) as archive:
        names = sorted(archive.namelist())
        archive.extractall(tmp_path / "unzipped")
    assert names == [f"frankfurt/frankfurt_{i:06d}_000019_leftImg8bit.png" for i in range(3)]
    predicted = set()
    for name in names:
        png = cv2.imread(str(tmp_path / "unzipped" / name), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and png.shape == (32, 64)  # one channel, the label's (original) size
        predicted |= set(np.unique(png).tolist())
    assert predicted <= set(TRAIN_ID_TO_LABEL_ID[:19].tolist())  # label ids, never train ids
    assert len(predicted) >= 3, "a one-class prediction would make the comparison weak"

    cs_miou, cs_classes = _cityscapes_score(tmp_path / "unzipped", data_dir / "cityscapes" / "gtFine" / "val")
    # Both average IoU over the 19 classes, skipping classes absent from both prediction and ground truth
    # (ours: NaN IoU; cityscapesscripts: tp + fp + fn = 0 → NaN), and neither counts void ground truth.
    assert cs_miou == pytest.approx(scored["mIoU"]["all19"], abs=0.01)
    for name, value in scored["per_class_iou"].items():
        theirs = cs_classes[name]
        assert (value is None) == np.isnan(theirs), name
        if value is not None:
            assert 100 * theirs == pytest.approx(value, abs=0.01), name
    assert json.loads((out / "export.json").read_text())["split"] == "val"


@pytest.mark.slow
def test_cityscapes_test_split_keeps_the_original_resolution(checkpoint, data_dir, tmp_path):
    summary = export(_cfg(checkpoint, data_dir, tmp_path, "gta2cs", "export=cityscapes"), tmp_path, progress=False)
    with zipfile.ZipFile(summary["zip"]) as archive:
        names = sorted(archive.namelist())
        sizes = {cv2.imdecode(np.frombuffer(archive.read(n), np.uint8), cv2.IMREAD_UNCHANGED).shape for n in names}
    assert names == ["berlin/berlin_000000_000019_leftImg8bit.png", "bielefeld/bielefeld_000001_000019_leftImg8bit.png"]
    assert sizes == {(32, 66)}  # the test images are 66 px wide, the eval scale 64


@pytest.mark.slow
def test_acdc_export_is_train_ids_named_after_the_input(checkpoint, data_dir, tmp_path):
    summary = export(_cfg(checkpoint, data_dir, tmp_path, "cs2acdc_night", "export=acdc"), tmp_path, progress=False)
    assert Path(summary["zip"]).name == "cs2acdc_night_test_acdc.zip"
    with zipfile.ZipFile(summary["zip"]) as archive:
        names = sorted(archive.namelist())
        maps = [cv2.imdecode(np.frombuffer(archive.read(n), np.uint8), cv2.IMREAD_UNCHANGED) for n in names]
    assert names == ["GOPR0500_frame_000000_rgb_anon.png", "GOPR0501_frame_000001_rgb_anon.png"]
    for label_map in maps:
        assert label_map.dtype == np.uint8 and label_map.shape == (32, 64)
        assert set(np.unique(label_map).tolist()) <= set(range(19))


@pytest.mark.slow
def test_dark_zurich_export_has_the_three_folders(checkpoint, data_dir, tmp_path):
    summary = export(_cfg(checkpoint, data_dir, tmp_path, "cs2darkzurich", "export=darkzurich"), tmp_path,
                     progress=False)
    with zipfile.ZipFile(summary["zip"]) as archive:
        names = set(archive.namelist())
        read = {n: cv2.imdecode(np.frombuffer(archive.read(n), np.uint8), cv2.IMREAD_UNCHANGED) for n in names}
    files = [f"GOPR0364_frame_{i:06d}_rgb_anon.png" for i in range(2)]
    assert names == {f"{d}/{f}" for d in ("labelTrainIds", "labelTrainIds_invalid", "confidence") for f in files}
    for f in files:
        labels = read[f"labelTrainIds/{f}"]
        assert np.array_equal(labels, read[f"labelTrainIds_invalid/{f}"])  # no pixel declared invalid
        assert set(np.unique(labels).tolist()) <= set(range(19))
        confidence = read[f"confidence/{f}"]
        assert confidence.dtype == np.uint16 and confidence.shape == labels.shape
        assert confidence.min() >= 65535 // 19  # the top softmax probability is at least 1/19


def test_export_of_a_dataset_the_server_does_not_score_is_one_line(checkpoint, data_dir, tmp_path):
    with pytest.raises(UserError, match=r"export=acdc takes ACDC images, but dataset=gta2cs .*use export=cityscapes"):
        export(_cfg(checkpoint, data_dir, tmp_path, "gta2cs", "export=acdc"), tmp_path)
    with pytest.raises(UserError, match="export='kitti' is not a benchmark server; use one of cityscapes, acdc"):
        export(_cfg(checkpoint, data_dir, tmp_path, "gta2cs", "export=kitti"), tmp_path)


def test_missing_test_split_is_one_clear_line(checkpoint, tmp_path):
    write_cityscapes(tmp_path / "data" / "cityscapes", n_train=0, n_val=1)  # no leftImg8bit/test
    result = subprocess.run(
        [sys.executable, "-m", "atp.evaluate", f"ckpt={checkpoint}", "model=mitb0_lite", "dataset=gta2cs",
         f"paths.data_dir={tmp_path / 'data'}", "device=cpu", f"output_dir={tmp_path / 'out'}", "export=cityscapes"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "leftImg8bit/test" in errors[0] and "folder is missing" in errors[0]
