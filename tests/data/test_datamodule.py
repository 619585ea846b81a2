"""The DataModule in every mode, the endless seeded sampler, and resuming under Lightning."""

from __future__ import annotations

import itertools

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint

from atp.data.datamodule import build_datamodule, collate_samples
from atp.data.sampler import InfiniteStreamSampler
from tests.helpers.data_trees import fixture_train_ids


def _batches(loader, n):
    return list(itertools.islice(iter(loader), n))


def test_source_mode_batches(data_fixture_root, data_compose):
    cfg = data_compose("gta2cs", data_fixture_root)
    dm = build_datamodule(cfg, "source", batch_size=2, num_workers=0)
    dm.setup("fit")
    batch = _batches(dm.train_dataloader(), 3)[-1]
    assert batch["img"].shape == (2, 3, 16, 16) and batch["img"].dtype == torch.float32
    assert batch["label"].shape == (2, 16, 16) and batch["label"].dtype == torch.uint8
    assert set(batch["label"].unique().tolist()) <= {0, 1, 2, 10, 11, 13, 255}
    assert all(name.startswith("images/") for name in batch["name"])
    val = next(iter(dm.val_dataloader()))  # target val: Cityscapes val at the original label size
    assert val["img"].shape == (1, 3, 32, 64) and val["label"].shape == (1, 32, 64)
    assert (val["label"][0].numpy() == fixture_train_ids(100)).all()
    assert (val["label"] == 255).any()


def test_labels_leave_the_workers_as_uint8_and_reach_the_step_as_int64(data_fixture_root, data_compose):
    cfg = data_compose("gta2cs", data_fixture_root)
    dm = build_datamodule(cfg, "source", batch_size=2, num_workers=2, seed=5)
    raw = next(iter(dm.train_dataloader()))  # collated in a worker process
    assert raw["label"].dtype == torch.uint8 and raw["label"].element_size() == 1
    wide = dm.on_after_batch_transfer(raw, 0)
    assert wide["label"].dtype == torch.int64 and torch.equal(wide["label"], raw["label"].to(torch.int64))
    assert wide["img"] is raw["img"] and wide["name"] == raw["name"]
    # the same first sample read in this process: identical label values
    key = next(iter(InfiniteStreamSampler(len(dm.dataset("source")), 2, 5, stream="source")))
    assert torch.equal(wide["label"][0], dm.dataset("source")[key]["label"].to(torch.int64))
    val = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert val["label"].dtype == torch.int64 and (val["label"][0].numpy() == fixture_train_ids(100)).all()
    # easy_hard: Lightning hands the hook one dict of streams
    nested = dm.on_after_batch_transfer({"easy": dict(raw), "hard": {"img": raw["img"]}}, 0)
    assert nested["easy"]["label"].dtype == torch.int64 and "label" not in nested["hard"]


def test_target_mode_has_no_labels_and_workers_agree(data_fixture_root, data_compose):
    cfg = data_compose("cs2acdc_night", data_fixture_root)
    in_process = build_datamodule(cfg, "target", batch_size=2, num_workers=0, seed=3)
    with_workers = build_datamodule(cfg, "target", batch_size=2, num_workers=2, seed=3)
    a, b = _batches(in_process.train_dataloader(), 3), _batches(with_workers.train_dataloader(), 3)
    for x, y in zip(a, b, strict=True):
        assert "label" not in x and x["name"] == y["name"] and torch.equal(x["img"], y["img"])
    assert a[0]["img"].shape == (2, 3, 32, 64)  # ACDC A/T: whole resized image (loader_crop.target: false)
    assert all(name.startswith("rgb_anon/night/train/") for name in a[0]["name"])


def test_easy_hard_mode(data_fixture_root, data_compose, tmp_path):
    cfg = data_compose("gta2cs", data_fixture_root)
    names = build_datamodule(cfg, "predict", num_workers=0).target_train_names()
    (tmp_path / "easy.txt").write_text("\n".join(names[:2]) + "\n")
    (tmp_path / "hard.txt").write_text("\n".join(names[2:]) + "\n\n")
    dm = build_datamodule(cfg, "easy_hard", batch_size=2, num_workers=0, split_dir=tmp_path)
    loaders = dm.train_dataloader()
    assert set(loaders) == {"easy", "hard"}
    easy, hard = _batches(loaders["easy"], 4), _batches(loaders["hard"], 4)
    assert {n for b in easy for n in b["name"]} == set(names[:2])
    assert {n for b in hard for n in b["name"]} <= set(names[2:])
    assert "label" not in easy[0] and easy[0]["img"].shape == (2, 3, 16, 16)
    with pytest.raises(FileNotFoundError, match="entropy ranking"):
        build_datamodule(cfg, "easy_hard", split_dir=tmp_path / "missing").train_dataloader()


def test_predict_mode_covers_all_target_train_images(data_fixture_root, data_compose):
    cfg = data_compose("gta2cs", data_fixture_root)
    dm = build_datamodule(cfg, "predict", val_batch_size=2, num_workers=0)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    names = [n for b in batches for n in b["name"]]
    assert names == dm.target_train_names() and len(names) == 6
    assert all("label" not in b for b in batches) and batches[0]["img"].shape == (2, 3, 32, 64)


def test_val_batches_larger_than_one(data_fixture_root, data_compose):
    cfg = data_compose("cs2acdc_fog", data_fixture_root)
    batch = next(iter(build_datamodule(cfg, "target", val_batch_size=2, num_workers=0).val_dataloader()))
    assert batch["label"].shape == (2, 32, 64)
    odd = [
        {"img": torch.zeros(3, 4, 4), "label": torch.zeros(4, 4), "name": "a"},
        {"img": torch.zeros(3, 4, 4), "label": torch.zeros(5, 4), "name": "b"},
    ]
    with pytest.raises(ValueError, match="val_batch_size=1"):
        collate_samples(odd)


def test_sampler_is_seeded_endless_and_resumable():
    full = list(itertools.islice(InfiniteStreamSampler(10, batch_size=4, seed=1), 40))
    indices = [i for i, _ in full]
    per_epoch = 8  # 10 // 4 * 4: batches never straddle two permutations
    for epoch in range(5):
        chunk = indices[epoch * per_epoch : (epoch + 1) * per_epoch]
        assert len(set(chunk)) == per_epoch
        assert (
            chunk
            == torch.randperm(10, generator=torch.Generator().manual_seed(1 + epoch))[:per_epoch].tolist()
        )
    resumed = list(itertools.islice(InfiniteStreamSampler(10, batch_size=4, seed=1, start=13), 27))
    assert resumed == full[13:]
    assert list(itertools.islice(InfiniteStreamSampler(10, 4, seed=2), 8)) != full[:8]
    ranks = [
        list(itertools.islice(InfiniteStreamSampler(10, 2, seed=1, num_replicas=2, rank=r), 4))
        for r in (0, 1)
    ]
    assert not {i for i, _ in ranks[0]} & {i for i, _ in ranks[1]}
    with pytest.raises(TypeError):
        len(InfiniteStreamSampler(10, 4))


def test_state_dict_without_trainer(data_fixture_root, data_compose):
    cfg = data_compose("gta2cs", data_fixture_root)
    dm = build_datamodule(cfg, "source", batch_size=2, num_workers=0, seed=5)
    full = [b["name"] for b in _batches(dm.train_dataloader(), 4)]
    state = dm.state_dict()
    assert state["seed"] == 5 and state["samples_consumed"]["source"] == 8
    fresh = build_datamodule(cfg, "source", batch_size=2, num_workers=0, seed=0)
    fresh.load_state_dict({"seed": 5, "batch_size": 2, "samples_consumed": {"source": 4}})
    assert [b["name"] for b in _batches(fresh.train_dataloader(), 2)] == full[2:4]


class _Recorder(pl.LightningModule):
    """Records the sample names of every training batch; no model from atp.models."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 19, 1)
        self.seen: list[list[str]] = []
        self.val_batches = 0
        self.starts: list[int] = []

    def on_train_start(self):
        self.starts.append(self.trainer.datamodule._samplers["source"].start)

    def training_step(self, batch, batch_idx):
        self.seen.append(list(batch["name"]))
        return F.cross_entropy(self.conv(batch["img"]), batch["label"], ignore_index=255)

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(tmp_path, max_steps, callbacks=()):
    return pl.Trainer(
        max_steps=max_steps,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=bool(callbacks),
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_lightning_max_steps_validation_and_exact_resume(data_fixture_root, data_compose, tmp_path):
    cfg = data_compose("gta2cs", data_fixture_root)
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1, filename="{step}"
    )
    full = _Recorder()
    _trainer(tmp_path, 6, [checkpoints]).fit(
        full, build_datamodule(cfg, "source", batch_size=2, num_workers=0)
    )
    assert len(full.seen) == 6 and full.val_batches == 2 * 2  # validated at steps 3 and 6 over 2 val images
    ckpt = torch.load(tmp_path / "ckpt" / "step=3.ckpt", weights_only=False)
    assert ckpt["SegDataModule"]["samples_consumed"] == {"source": 6}

    resumed = _Recorder()
    dm = build_datamodule(cfg, "source", batch_size=2, num_workers=0)
    _trainer(tmp_path, 6).fit(resumed, dm, ckpt_path=tmp_path / "ckpt" / "step=3.ckpt")
    assert resumed.starts == [6]  # global_step was restored before train_dataloader() was built
    assert resumed.seen == full.seen[3:]


def test_lightning_runs_easy_hard_streams(data_fixture_root, data_compose, tmp_path):
    cfg = data_compose("gta2cs", data_fixture_root)
    names = build_datamodule(cfg, "predict", num_workers=0).target_train_names()
    (tmp_path / "easy.txt").write_text("\n".join(names[:2]))
    (tmp_path / "hard.txt").write_text("\n".join(names[2:]))
    seen = []

    class TwoStreams(_Recorder):
        def on_train_start(self):
            pass

        def training_step(self, batch, batch_idx):
            assert set(batch) == {"easy", "hard"} and "label" not in batch["easy"]
            seen.append((batch["easy"]["name"], batch["hard"]["name"]))
            return self.conv(batch["easy"]["img"]).mean() + self.conv(batch["hard"]["img"]).mean()

    dm = build_datamodule(cfg, "easy_hard", batch_size=2, num_workers=0, split_dir=tmp_path)
    _trainer(tmp_path, 4).fit(TwoStreams(), dm)
    assert len(seen) == 4
