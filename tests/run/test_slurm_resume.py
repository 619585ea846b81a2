"""SLURM requeue: Lightning's requeue handler (SIGUSR1) saves the full state to ``<run dir>/hpc_ckpt_<n>.ckpt``.

Resume takes whichever of ``checkpoints/last.ckpt`` and the ``hpc_ckpt_*.ckpt`` files holds the highest
step, and on SLURM the runner makes that choice instead of Lightning (which would load the newest-numbered
``hpc_ckpt`` whenever ``ckpt_path`` is unset, even into the final validation). No SLURM needed: the
checkpoints are written the way the handler writes them, and SLURM is faked through its variables.
"""

import shutil

import pytest
import torch
from omegaconf import open_dict
from pytorch_lightning.callbacks import Callback

from atp.run import pipeline, run_stage
from tests.helpers.stages import CrashAtStep, stage_cfg

SLURM_ENV = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "atp", "SLURM_JOB_ID": "1", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


class SaveLikeRequeueHandler(Callback):
    """At ``step``, what Lightning's SLURM handler does: ``trainer.save_checkpoint(hpc_save_path(root dir))``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir))


class Record(Callback):
    """The step training starts from and the student weights when it ends."""

    def on_train_start(self, trainer, module):
        self.start = trainer.global_step

    def on_train_end(self, trainer, module):
        self.weights = {k: v.detach().clone() for k, v in module.student.state_dict().items()}


def _step(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def _cfg(data_dir, run_dir, *extra):
    return stage_cfg("source", data_dir, run_dir.parent, run_dir, "trainer.max_steps=6", "checkpoint_every=3",
                     "trainer.val_check_interval=4", *extra)


@pytest.fixture(scope="module")
def interrupted(data_toy_root, module_tmp):
    """A source run (6 steps) that crashed after step 5: last.ckpt holds step 3, hpc_ckpt_1.ckpt step 4."""
    run_dir = module_tmp / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_stage(_cfg(data_toy_root, run_dir), run_dir, extra_callbacks=[SaveLikeRequeueHandler(4), CrashAtStep(5)])
    assert _step(run_dir / "checkpoints" / "last.ckpt") == 3 and _step(run_dir / "hpc_ckpt_1.ckpt") == 4
    return run_dir


def _copy(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run")


def _rerun_on_slurm(data_dir, run_dir, monkeypatch) -> tuple[Record, dict]:
    """The same command again, as a requeued SLURM job (faked through its variables)."""
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    cfg = _cfg(data_dir, run_dir)
    with open_dict(cfg):
        cfg.trainer.accelerator, cfg.trainer.devices = "cpu", 1
    record = Record()
    return record, run_stage(cfg, run_dir, extra_callbacks=[record])


def test_resume_checkpoint_takes_the_highest_step(interrupted, tmp_path):
    from atp.run.resume import resume_checkpoint

    run_dir = _copy(interrupted, tmp_path)
    last, hpc = run_dir / "checkpoints" / "last.ckpt", run_dir / "hpc_ckpt_1.ckpt"
    assert resume_checkpoint(run_dir) == hpc  # step 4 beats last.ckpt's 3
    step3, step4 = last.read_bytes(), hpc.read_bytes()
    last.write_bytes(step4)  # e.g. SIGTERM after the handler's save: last.ckpt is the newer one
    hpc.write_bytes(step3)
    (run_dir / "hpc_ckpt_2.ckpt").write_bytes(step3[:3000])  # unreadable: never preferred
    (run_dir / "hpc_ckpt_old.ckpt").write_bytes(step4)  # not a name Lightning writes
    assert resume_checkpoint(run_dir) == last
    assert resume_checkpoint(tmp_path / "empty") is None


def test_resume_continues_from_the_requeue_checkpoint(interrupted, data_toy_root, tmp_path):
    run_dir = _copy(interrupted, tmp_path)
    record = Record()
    manifest = run_stage(_cfg(data_toy_root, run_dir, "resume=true"), run_dir, extra_callbacks=[record])
    assert record.start == 4  # from hpc_ckpt_1.ckpt, not last.ckpt (step 3)
    assert manifest["status"] == "complete" and manifest["steps"] == 6


def test_on_slurm_the_newest_state_wins_and_final_weights_are_the_trained_ones(
        interrupted, data_toy_root, tmp_path, monkeypatch):
    """Requeued with the same command (resume=false): Lightning alone would restore hpc_ckpt_1 (step 3 here)
    for fit and again for the final validation, overwriting the trained weights before final.ckpt."""
    run_dir = _copy(interrupted, tmp_path)
    last, hpc = run_dir / "checkpoints" / "last.ckpt", run_dir / "hpc_ckpt_1.ckpt"
    step3, step4 = last.read_bytes(), hpc.read_bytes()
    last.write_bytes(step4)
    hpc.write_bytes(step3)
    record, manifest = _rerun_on_slurm(data_toy_root, run_dir, monkeypatch)
    assert record.start == 4
    assert manifest["status"] == "complete" and manifest["steps"] == 6
    assert manifest["history"][-1]["step"] == 6  # the final validation ran (training validated at step 4)
    final = torch.load(run_dir / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    differing = [k for k, v in record.weights.items() if not torch.equal(final[f"student.{k}"], v)]
    assert not differing, differing[:5]


def test_on_slurm_a_requeued_unfinished_stage_resumes_from_last_ckpt(interrupted, data_toy_root, tmp_path,
                                                                     monkeypatch):
    """No hpc_ckpt (submitit's path saves last.ckpt): the same command on SLURM continues the stage."""
    run_dir = _copy(interrupted, tmp_path)
    (run_dir / "hpc_ckpt_1.ckpt").unlink()
    assert pipeline.read_manifest(run_dir)["status"] == "failed"  # the simulated crash, recorded
    record, manifest = _rerun_on_slurm(data_toy_root, run_dir, monkeypatch)
    assert record.start == 3 and manifest["status"] == "complete" and manifest["steps"] == 6
