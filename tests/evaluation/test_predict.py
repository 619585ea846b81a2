"""``atp.predict`` on the toy's images and a short video made here, with a tiny converted checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cityscapesscripts.helpers.labels import trainId2label
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from atp.errors import UserError
from atp.models.weights import save_converted
from atp.predict import find_inputs, predict
from tests.helpers.stages import CONF_DIR

ROOT = Path(__file__).resolve().parents[2]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255
TOY_SCALE = (128, 64)  # [long, short] for the tests: the 64×32 toy images are upscaled ×2


pytestmark = pytest.mark.usefixtures("single_thread")


def compose_predict(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("predict", overrides=["model=mitb0_lite", "dataset=toy", "device=cpu",
                                             f"scale=[{TOY_SCALE[0]},{TOY_SCALE[1]}]", *overrides])


@pytest.fixture(scope="module")
def checkpoint(module_tmp) -> tuple[Path, torch.nn.Module]:
    """A random MiT-B0-lite segmentor in the converted format, and the model itself (eval mode)."""
    torch.manual_seed(3)
    model = instantiate(compose_predict("ckpt=x", "input=x").model)
    with torch.no_grad():  # spread the classes: a freshly initialised head predicts almost one class
        model.decode_head.conv_seg.weight.mul_(50)
    path = save_converted(module_tmp / "tiny.pth", model.state_dict())
    return path, model.eval()


@pytest.fixture
def inputs(data_toy_root, tmp_path) -> Path:
    """Four toy val images, one of them resized to an odd size in a sub-folder, a corrupt PNG sorted between
    them, a 6-frame video and a text file (ignored)."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    images = sorted((data_toy_root / "toy" / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))
    assert len(images) == 4
    for index, image in enumerate(images[:3]):
        shutil.copy(image, folder / f"a{index}.png")
    odd = cv2.resize(cv2.imread(str(images[3])), (50, 37), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "sub" / "odd.jpg"), odd)
    (folder / "a1_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (folder / "notes.txt").write_text("not an image")
    writer = cv2.VideoWriter(str(folder / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 32))
    assert writer.isOpened()
    for index in range(6):
        writer.write(cv2.imread(str(images[index % 4])))
    writer.release()
    return folder


def expected_train_ids(model: torch.nn.Module, rgb: np.ndarray) -> np.ndarray:
    """Worked out without atp's pipeline: keep-ratio resize into TOY_SCALE, ImageNet normalisation,
    logits upsampled to the image's own size, argmax."""
    height, width = rgb.shape[:2]
    factor = min(max(TOY_SCALE) / max(height, width), min(TOY_SCALE) / min(height, width))
    size = (int(width * factor + 0.5), int(height * factor + 0.5))
    resized = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR).astype(np.float64)
    x = torch.from_numpy(((resized - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = F.interpolate(model(x), size=(height, width), mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)[0].numpy().astype(np.uint8)


def read_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]


def test_predict_writes_ids_colours_overlays_and_video(checkpoint, inputs, tmp_path):
    path, model = checkpoint
    out = tmp_path / "out"
    cfg = compose_predict(f"ckpt={path}", f"input={inputs}", f"out={out}", "batch_size=2")
    summary = predict(cfg)
    assert (summary.images, summary.videos, summary.frames) == (4, 1, 6)
    assert summary.skipped == [str(inputs / "a1_corrupt.png")]
    palette = {t: np.array(trainId2label[t].color, np.uint8) for t in range(19)}
    classes_seen = set()
    for source in [inputs / "a0.png", inputs / "a1.png", inputs / "a2.png", inputs / "sub" / "odd.jpg"]:
        stem = out / source.relative_to(inputs).with_suffix("")
        rgb = read_rgb(source)
        ids = cv2.imread(str(stem.with_name(stem.name + "_trainIds.png")), cv2.IMREAD_UNCHANGED)
        assert ids.shape == rgb.shape[:2] and ids.dtype == np.uint8
        np.testing.assert_array_equal(ids, expected_train_ids(model, rgb))
        colour = read_rgb(stem.with_name(stem.name + "_color.png"))
        np.testing.assert_array_equal(colour, np.stack([palette[int(t)] for t in ids.ravel()]).reshape(colour.shape))
        blended = read_rgb(stem.with_name(stem.name + "_overlay.png")).astype(int)
        assert np.abs(blended - (colour.astype(int) + rgb.astype(int)) / 2).max() <= 1
        classes_seen |= set(np.unique(ids).tolist())
    assert len(classes_seen) > 1  # the comparison above is not between two constant maps
    assert not (out / "a1_corrupt_trainIds.png").exists() and not (out / "notes_trainIds.png").exists()
    video = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    frames = []
    while (frame := video.read())[0]:
        frames.append(frame[1])
    assert len(frames) == 6 and frames[0].shape == (32, 64, 3)
    assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)
    assert not list(out.glob(".*partial*"))
    nested = inputs / "sub" / "predictions"  # out inside input: a second run must not read the first one's outputs
    assert predict(compose_predict(f"ckpt={path}", f"input={inputs / 'sub'}", f"out={nested}")).images == 1
    assert predict(compose_predict(f"ckpt={path}", f"input={inputs / 'sub'}", f"out={nested}")).images == 1


def test_predict_cli_reports_a_corrupt_file_in_one_line_and_finishes(checkpoint, inputs, tmp_path):
    path, _ = checkpoint
    out = tmp_path / "out"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "atp.predict", f"ckpt={path}", f"input={inputs}", f"out={out}", "model=mitb0_lite",
         "dataset=toy", "device=cpu", "eval.mode=slide", "eval.crop_size=[64,64]", "eval.stride=[48,48]",
         "eval.flip=true"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 1, result.stderr[-3000:]
    skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert skipped == [f"atp.predict: skipped {inputs / 'a1_corrupt.png'}: image cannot be decoded "
                       "(corrupt or truncated)"], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "wrote 4 image(s) and 1 video(s) (6 frames)" in result.stdout
    assert len(list(out.rglob("*_trainIds.png"))) == 4 and (out / "clip_overlay.mp4").is_file()
    assert cv2.imread(str(out / "sub" / "odd_trainIds.png"), cv2.IMREAD_UNCHANGED).shape == (37, 50)


def test_inputs_glob_file_and_errors(inputs, tmp_path):
    root, files = find_inputs(str(inputs / "**" / "*.jpg"))
    assert root == inputs and files == [inputs / "sub" / "odd.jpg"]
    root, files = find_inputs(str(inputs / "a*.png"))
    assert root == inputs and [f.name for f in files] == ["a0.png", "a1.png", "a1_corrupt.png", "a2.png"]
    assert find_inputs(str(inputs / "clip.avi")) == (inputs, [inputs / "clip.avi"])
    with pytest.raises(UserError, match="input=.*nowhere: no such file or folder"):
        find_inputs(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image or video file in the folder"):
        find_inputs(str(tmp_path / "empty"))


def test_wrong_model_config_names_the_network_in_the_checkpoint(checkpoint, inputs, tmp_path):
    path, _ = checkpoint
    cfg = compose_predict(f"ckpt={path}", f"input={inputs}", f"out={tmp_path / 'out'}", "model=mitb0")
    with pytest.raises(UserError, match="choose the model= config .* holds a mit_b0 network"):
        predict(cfg)
