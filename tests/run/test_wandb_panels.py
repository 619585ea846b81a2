"""``logger=wandb`` extras, offline: sample panels, the per-class IoU table, the model artifact; and
that logging them leaves training bit-identical."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from atp.data.labels import CLASS_NAMES, PALETTE
from atp.run import run_stage
from tests.helpers.stages import stage_cfg

WIDTH, HEIGHT = 64, 32  # the toy val images at dataset.scale=[64,32]


@pytest.fixture(scope="module")
def source_ckpt(data_toy_root, module_tmp):
    out = module_tmp
    run_stage(stage_cfg("source", data_toy_root, out, out / "src", "trainer.max_steps=2"), out / "src")
    return out / "src" / "checkpoints" / "final.ckpt"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """W&B offline with every W&B folder inside the test's tmp dir (nothing may reach wandb.ai)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("CACHE", "DATA", "CONFIG", "ARTIFACT"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / f"wandb_{name.lower()}"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def _run(stage, data_dir, out, source_ckpt, *overrides):
    run_dir = out / stage
    cfg = stage_cfg(stage, data_dir, out, run_dir, f"init_from={source_ckpt}", *overrides)
    return run_stage(cfg, run_dir), run_dir


def _offline_run(run_dir):
    (path,) = (run_dir / "wandb").glob("offline-run-*")
    return path


def _records(offline_run) -> bytes:
    """The record payloads of the run's ``.wandb`` log (32 KiB blocks of chunks with 7-byte headers)."""
    (path,) = offline_run.glob("*.wandb")
    data, out, pos = path.read_bytes(), bytearray(), 7
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer padding
            pos += 32768 - pos % 32768
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        out += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
    return bytes(out)


def _tiles(path):
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (HEIGHT, 4 * WIDTH, 3), path
    return [image[:, i * WIDTH : (i + 1) * WIDTH].astype(int) for i in range(4)]


def _val_images(data_dir):
    return [np.asarray(Image.open(p).convert("RGB")).astype(int)
            for p in sorted((data_dir / "toy" / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))]


def _weights(run_dir):
    state = torch.load(run_dir / "checkpoints" / "final.ckpt", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def test_teach_logs_panels_iou_table_and_model_artifact(data_toy_root, source_ckpt, offline):
    manifest, run_dir = _run("teach", data_toy_root, offline / "out", source_ckpt, "logger=wandb",
                             "callbacks.wandb_panels.image_interval=2", "callbacks.wandb_panels.log_model=true")
    run = _offline_run(run_dir)

    panels = sorted((run / "files" / "media" / "images").rglob("*.png"))
    assert len(panels) == 2 * 4  # steps 2 and 4 (the end), four fixed val samples each
    palette = {tuple(c) for c in PALETTE}
    val_images = _val_images(data_toy_root)
    for path in panels:
        image, prediction, pseudo, entropy = _tiles(path)
        assert any(np.abs(image - v).max() <= 1 for v in val_images), f"{path}: input tile is no val image"
        assert {tuple(c) for c in prediction.reshape(-1, 3)} <= palette
        assert not (pseudo == 128).all()  # the teacher's pseudo-label, not the n/a tile
        assert (entropy[..., 0] == entropy[..., 1]).all() and (entropy[..., 1] == entropy[..., 2]).all()

    (table_path,) = (run / "files" / "media" / "table").rglob("per_class_IoU_*.table.json")
    table = json.loads(table_path.read_text())
    assert table["columns"] == ["class", "IoU"]
    assert [row[0] for row in table["data"]] == list(CLASS_NAMES)
    assert [row[1] for row in table["data"]] == pytest.approx(
        [manifest["metrics"][f"IoU/{name}"] for name in CLASS_NAMES])

    records = _records(run)
    name = f"toy-teach-{run_dir.name}".encode()
    assert name in records and b"manifest.json" in records and b"final.ckpt" in records
    staged = [p.read_bytes() for p in (offline / "wandb_data").rglob("staging/*")]  # offline copies
    assert json.loads((run_dir / "manifest.json").read_bytes()) in [json.loads(b) for b in staged
                                                                     if b.startswith(b"{")]


def test_panels_leave_training_bit_identical(data_toy_root, source_ckpt, offline):
    _, plain = _run("teach", data_toy_root, offline / "plain", source_ckpt)
    _, logged = _run("teach", data_toy_root, offline / "logged", source_ckpt, "logger=wandb",
                     "callbacks.wandb_panels.image_interval=1")
    assert len(list((_offline_run(logged) / "files" / "media" / "images").rglob("*.png"))) == 4 * 4
    expected, got = _weights(plain), _weights(logged)
    assert expected.keys() == got.keys()
    assert not [k for k in expected if not torch.equal(expected[k], got[k])]  # BN statistics included


def test_align_shows_na_tile_and_wandb_failures_only_warn(data_toy_root, source_ckpt, offline, monkeypatch, caplog):
    from pytorch_lightning.loggers import WandbLogger

    def broken(*args, **kwargs):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(WandbLogger, "log_table", broken)
    with caplog.at_level(logging.WARNING, logger="atp.callbacks.wandb_panels"):
        manifest, run_dir = _run("align", data_toy_root, offline / "out", source_ckpt, "logger=wandb",
                                 "callbacks.wandb_panels.image_count=1")
    assert manifest["status"] == "complete"
    assert "W&B per-class IoU table failed (RuntimeError: W&B is down)" in caplog.text
    (panel,) = (_offline_run(run_dir) / "files" / "media" / "images").rglob("*.png")  # only the final one
    pseudo = _tiles(panel)[2]
    assert (pseudo == 128).mean() > 0.8 and pseudo.max() > 200  # grey with a white "n/a"


def test_wandb_logger_keeps_the_run_name(tmp_path, monkeypatch):
    from atp.run.loggers import make_wandb_logger

    monkeypatch.setenv("WANDB_API_KEY", "")  # emptied variables are removed, the name must survive that loop
    logger = make_wandb_logger(name="teach-run1", save_dir=str(tmp_path), mode="offline")
    assert logger._wandb_init["name"] == "teach-run1"
