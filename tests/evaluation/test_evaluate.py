"""``atp.evaluate`` on a checkpoint in the authors' UDA format, on the toy target val."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from atp.evaluate import evaluate
from tests.helpers.stages import CONF_DIR, REPO_ROOT

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


#: the class each network of :func:`uda_checkpoint` predicts on every pixel (its classifier is a bias alone)
PREDICTS = {"student": 0, "teacher": 13}


@pytest.fixture(scope="module")
def uda_checkpoint(module_tmp) -> Path:
    """A random MiT-B5 ATP UDA checkpoint ({'state_dict': model.* / ema_model.*, 'meta'}) from the manifest,
    whose student (``model.``) and teacher (``ema_model.``) predict different classes (:data:`PREDICTS`)."""
    keys = json.loads((FIXTURES / "atp_uda_checkpoint.json").read_text())["keys"]
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in keys.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(0, dtype=torch.int64)
        elif name.endswith("running_var"):
            state[name] = torch.ones(shape)
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.02
    for prefix, role in (("model.", "student"), ("ema_model.", "teacher")):
        state[prefix + "decode_head.conv_seg.weight"].zero_()
        bias = torch.zeros(19)
        bias[PREDICTS[role]] = 1.0
        state[prefix + "decode_head.conv_seg.bias"] = bias
    path = module_tmp / "atp_uda.pth"
    torch.save({"state_dict": state, "meta": {"iter": 40000, "seed": 76}}, path)
    yield path
    path.unlink()


def _labelled_val_pixels(data_dir: Path) -> int:
    """Pixels of the toy val labels whose Cityscapes id maps to a train id (counted from the files)."""
    import cv2

    from atp.data.labels import CITYSCAPES_LUT

    files = sorted((data_dir / "toy" / "cityscapes" / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    assert len(files) == 4
    return sum(int((CITYSCAPES_LUT[cv2.imread(str(f), cv2.IMREAD_UNCHANGED)] != 255).sum()) for f in files)


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["student", "teacher"])
def test_evaluate_writes_metrics_and_plots(uda_checkpoint, data_toy_root, tmp_path, weights):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            f"ckpt={uda_checkpoint}", "model=mitb5", "dataset=toy", f"paths.data_dir={data_toy_root}",
            "dataset.scale=[64,32]", "dataset.toy.n_source=12", "dataset.toy.n_target=8", "dataset.toy.n_val=4",
            "dataset.toy.size=[64,32]", "data.num_workers=0", "data.val_batch_size=2", f"weights={weights}",
            f"output_dir={tmp_path}", "num_vis=2", "device=cpu",
        ])
    result = evaluate(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["weights"] == weights
    assert 0.0 <= metrics["mIoU"]["all19"] <= 100.0
    assert len(metrics["per_class_iou"]) == 19
    matrix = torch.tensor(metrics["confusion_matrix"])
    assert matrix.shape == (19, 19)
    assert int(matrix.sum()) == _labelled_val_pixels(data_toy_root)
    predicted = matrix.sum(dim=0)  # rows: label, columns: prediction
    assert int(predicted[PREDICTS[weights]]) == int(matrix.sum())  # the chosen network's class, everywhere
    assert result["mIoU"] == metrics["mIoU"]
    for name in ("per_class_iou.png", "confusion_matrix.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert len(list((tmp_path / "predictions").glob("*.png"))) == 2


def test_missing_dataset_is_one_clear_line(tmp_path):
    import subprocess
    import sys

    from atp.models import build_segmentor

    ckpt = tmp_path / "b0.pth"
    torch.save(build_segmentor("mit_b0", proj_head=None).state_dict(), ckpt)
    result = subprocess.run(
        [sys.executable, "-m", "atp.evaluate", f"ckpt={ckpt}", "model=mitb0", "dataset=gta2cs",
         f"paths.data_dir={tmp_path / 'nodata'}", "device=cpu", f"output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(tmp_path / "nodata") in errors[0] and "folder is missing" in errors[0]


def test_sample_image_is_input_prediction_ground_truth_and_error_map():
    from atp.data.labels import PALETTE
    from atp.data.transforms import MEAN, STD
    from atp.evaluate import sample_panel

    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    img = torch.from_numpy(((rgb - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1).astype(np.float32))
    label = np.zeros((4, 6), np.uint8)  # road
    label[0, :] = 255  # void row
    pred = np.zeros((4, 6), np.int64)
    pred[1, 1], pred[2, 3], pred[0, 0] = 13, 2, 5  # two wrong pixels; the one on the void row is not an error
    panel = sample_panel(img, pred, label)
    assert panel.shape == (4, 24, 3)
    inp, prediction, truth, errors = (panel[:, 6 * k : 6 * (k + 1)] for k in range(4))
    assert (inp == (200, 100, 50)).all()  # the model input, un-normalised
    assert tuple(prediction[1, 1]) == PALETTE[13] and tuple(prediction[3, 3]) == PALETTE[0]
    assert tuple(truth[2, 2]) == PALETTE[0] and (truth[0] == 0).all()  # void drawn black
    red = (errors == (255, 0, 0)).all(axis=-1)
    assert np.argwhere(red).tolist() == [[1, 1], [2, 3]]
    assert (errors[0] == 128).all() and (errors[3] == 0).all()  # void grey, right pixels black
