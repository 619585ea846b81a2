"""Faults a long run meets: kill/full disk mid-save, divergence, corrupt or hostile checkpoints, bad output dir."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from pytorch_lightning.callbacks import Callback

from atp.atomic import clean_stale_temp_files
from atp.callbacks.divergence import batch_names
from atp.errors import CheckpointError, CheckpointReadError, CheckpointWriteError, DivergenceError, UserError
from atp.models.weights import read_checkpoint
from atp.run import pipeline, run_stage
from atp.run.checkpoint_io import AtomicCheckpointIO
from tests.helpers.hostile import HostilePayload
from tests.helpers.stages import TINY, stage_cfg

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- atomic checkpoint writes
def test_sigkill_during_save_keeps_the_previous_checkpoint(tmp_path):
    """A writer SIGKILLed mid-save leaves the old last.ckpt intact and only a stale temp file behind."""
    target = tmp_path / "last.ckpt"
    script = textwrap.dedent(f"""
        import time, torch
        from atp.run.checkpoint_io import AtomicCheckpointIO
        io = AtomicCheckpointIO()
        io.save_checkpoint({{"step": 1, "w": torch.arange(10.0)}}, {str(target)!r})
        print("first saved", flush=True)
        def slow_write(checkpoint, handle):
            handle.write(b"PK partial bytes of a large checkpoint")
            handle.flush()
            time.sleep(60)  # killed here
        AtomicCheckpointIO.write = staticmethod(slow_write)
        io.save_checkpoint({{"step": 2, "w": torch.zeros(1_000_000)}}, {str(target)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "first saved"
        deadline = time.monotonic() + 30
        while not [p for p in tmp_path.glob(".last.ckpt.*.tmp") if p.stat().st_size > 0]:
            assert time.monotonic() < deadline, "the second save never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(target, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(10.0))
    stale = clean_stale_temp_files(tmp_path)
    assert [p.name for p in stale] and all(p.name.startswith(".last.ckpt.") for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def _fail_with_enospc(checkpoint, handle):
    handle.write(b"half a checkpoint")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, target)
    monkeypatch.setattr(AtomicCheckpointIO, "write", staticmethod(_fail_with_enospc))
    with pytest.raises(CheckpointWriteError) as caught:
        io.save_checkpoint({"step": 2}, target)
    message = str(caught.value)
    assert str(target) in message and "No space left on device" in message and "previous file is unchanged" in message
    assert isinstance(caught.value, UserError)  # atp.train prints it as one line, exit code 2
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the temp file was removed


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_atomic_files_get_the_mode_open_gives_and_keep_a_replaced_files_mode(tmp_path, umask_022):
    """Not mkstemp's 0600: on a shared cluster the group must be able to read checkpoints and manifests."""
    import numpy as np

    from atp.atomic import atomic_write_json
    from atp.data.io import write_png_atomic

    ckpt, manifest, label = tmp_path / "last.ckpt", tmp_path / "manifest.json", tmp_path / "label.png"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, ckpt)
    atomic_write_json(manifest, {"a": 1})
    write_png_atomic(label, np.zeros((4, 4), np.uint8))
    assert [oct(p.stat().st_mode & 0o777) for p in (ckpt, manifest, label)] == [oct(0o644)] * 3
    for path in (ckpt, manifest, label):
        path.chmod(0o640)
    AtomicCheckpointIO().save_checkpoint({"step": 2}, ckpt)
    atomic_write_json(manifest, {"a": 2})
    write_png_atomic(label, np.ones((4, 4), np.uint8))
    assert [oct(p.stat().st_mode & 0o777) for p in (ckpt, manifest, label)] == [oct(0o640)] * 3
    assert torch.load(ckpt, weights_only=True) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["label.png", "last.ckpt", "manifest.json"]


# ---------------------------------------------------------------------- stages: divergence, full disk, corrupt resume
class PoisonBatch(Callback):
    """Turns the images of the batch at ``step`` into NaN (a corrupt sample / numeric blow-up)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            batch["img"].fill_(float("nan"))


class FailSavesAfter(Callback):
    """From ``step`` on every checkpoint write fails with ENOSPC (the disk filled up)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.strategy.checkpoint_io.write = _fail_with_enospc


@pytest.fixture(scope="module")
def diverged(data_toy_root, module_tmp):
    """A source run whose step-3 batch is NaN: (run dir, raised error, names of the poisoned batch)."""
    out = module_tmp
    run_dir = out / "run"
    cfg = stage_cfg("source", data_toy_root, out, run_dir, "trainer.max_steps=6", "checkpoint_every=2",
                    "trainer.val_check_interval=6")

    class RecordNames(Callback):
        names: list[str] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 3:
                RecordNames.names = list(batch["name"])

    with pytest.raises(DivergenceError) as caught:
        run_stage(cfg, run_dir, extra_callbacks=[RecordNames(), PoisonBatch(3)])
    return run_dir, caught.value, RecordNames.names


def test_divergence_stops_with_postmortem_and_keeps_last(diverged):
    run_dir, error, names = diverged
    ckpts = run_dir / "checkpoints"
    message = str(error)
    assert "stage=source diverged at step 3" in message and names and all(n in message for n in names)
    assert "postmortem-step3.ckpt" in message
    postmortem = torch.load(ckpts / "postmortem-step3.ckpt", weights_only=False)
    assert postmortem["divergence"]["step"] == 3 and postmortem["divergence"]["batch"] == names
    assert postmortem["global_step"] == 3
    # The post-mortem holds the parameters before the bad step (finite); only the forward pass ran,
    # so BatchNorm running statistics may already hold the NaN that caused the divergence.
    state = postmortem["state_dict"]
    weights = [k for k in state if k.endswith(".weight") and "bn" not in k and "norm" not in k]
    assert weights and all(torch.isfinite(state[k]).all() for k in weights)
    last = torch.load(ckpts / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2
    assert not (ckpts / "final.ckpt").exists()
    assert read_checkpoint(ckpts / "last.ckpt")  # loadable by the safe reader too
    manifest = pipeline.read_manifest(run_dir)
    assert manifest["status"] == "failed" and manifest["stopped_at_step"] == 3  # never marked complete
    assert manifest["error"].startswith("DivergenceError: stage=source diverged at step 3")


def test_ctrl_c_marks_the_manifest_interrupted(data_toy_root, tmp_path):
    """Lightning turns Ctrl-C into exit status 1; the manifest records it instead of staying 'running'."""

    class PressCtrlC(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 3:  # after the step-2 save (checkpoint callbacks run last)
                raise KeyboardInterrupt

    run_dir = tmp_path / "run"
    cfg = stage_cfg("source", data_toy_root, tmp_path, run_dir, "trainer.max_steps=6", "checkpoint_every=2")
    with pytest.raises(SystemExit) as stopped:
        run_stage(cfg, run_dir, extra_callbacks=[PressCtrlC()])
    assert stopped.value.code == 1
    manifest = pipeline.read_manifest(run_dir)
    assert manifest["status"] == "interrupted" and manifest["stopped_at_step"] == 3
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2


def test_truncated_checkpoint_resume_is_a_clear_error(diverged, data_toy_root, tmp_path):
    run_dir, _, _ = diverged
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes()[:4000])
    cfg = stage_cfg("source", data_toy_root, tmp_path, tmp_path / "resumed", f"ckpt_path={broken}")
    with pytest.raises(CheckpointReadError, match="cannot be read .truncated or corrupt"):
        run_stage(cfg, tmp_path / "resumed")


def test_disk_full_mid_stage_keeps_last_checkpoint(data_toy_root, tmp_path):
    run_dir = tmp_path / "run"
    cfg = stage_cfg("source", data_toy_root, tmp_path, run_dir, "trainer.max_steps=4", "checkpoint_every=2",
                    "trainer.val_check_interval=4")
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        run_stage(cfg, run_dir, extra_callbacks=[FailSavesAfter(3)])
    ckpts = run_dir / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 2
    assert not list(ckpts.glob(".*.tmp"))


def test_checkpoint_for_another_class_count_is_refused(data_toy_root, tmp_path):
    from hydra.utils import instantiate

    cfg = stage_cfg("align", data_toy_root, tmp_path, tmp_path / "run")
    with open_dict(cfg):
        cfg.model.num_classes = 5
    other = tmp_path / "five_classes.pth"
    torch.save(instantiate(cfg.model).state_dict(), other)
    cfg = stage_cfg("align", data_toy_root, tmp_path, tmp_path / "run", f"init_from={other}")
    with pytest.raises(CheckpointError, match="conv_seg"):
        run_stage(cfg, tmp_path / "run")


def test_unwritable_output_dir_is_a_clear_error(data_toy_root, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the output directory should be")
    run_dir = blocker / "run"
    cfg = stage_cfg("source", data_toy_root, tmp_path, run_dir)
    with pytest.raises(UserError, match="is not writable.*paths.output_dir"):
        run_stage(cfg, run_dir)


def test_batch_names_of_plain_and_easy_hard_batches():
    assert batch_names({"img": None, "name": ["a.png", "b.png"]}) == ["a.png", "b.png"]
    assert batch_names({"easy": {"name": ["e.png"]}, "hard": {"name": ["h.png"]}}) == ["easy:e.png", "hard:h.png"]


# ---------------------------------------------------------------------- hostile checkpoint end to end
def test_malicious_pickle_is_refused_by_reader_and_by_train(data_toy_root, tmp_path):
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"student.decode_head.conv_seg.bias": torch.zeros(19)}, "extra": HostilePayload(marker)}, evil)

    with pytest.raises(CheckpointError, match="_leave_marker"):
        read_checkpoint(evil)
    assert not marker.exists()

    out = tmp_path / "outputs"
    proc = subprocess.run(
        [sys.executable, "-m", "atp.train", *TINY, "stage=align", f"paths.data_dir={data_toy_root}",
         f"paths.output_dir={out}", f"init_from={evil}", "trainer.max_steps=1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1 and str(evil) in errors[0] and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_a_split_rank_split_cannot_write_is_a_user_error(tmp_path):
    """write_split's UserError (here: ⌊0.3·2⌋ = 0 easy images) reaches the entry point as one, not a traceback."""
    from torch.utils.data import DataLoader

    from atp.run.split import rank_split

    class Flat(torch.nn.Module):
        def forward(self, img):
            return img.new_zeros(img.shape[0], 19, 8, 8)

    images = [{"img": torch.zeros(3, 8, 8), "name": f"im{i}"} for i in range(2)]
    with pytest.raises(UserError, match="leaves one side empty"):
        rank_split(Flat(), DataLoader(images, batch_size=1), tmp_path / "split", easy_ratio=0.3)
