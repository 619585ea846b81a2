"""SIGTERM mid-stage (a scheduler's pre-emption or time limit): ``python -m atp.train`` as users run it.

Lightning only stops after the current batch; the runner saves that step to ``last.ckpt``
(:class:`atp.callbacks.signals.SigtermCheckpoint`), marks the manifest ``interrupted`` and exits 143 with one
line. ``resume=true`` then finishes the stage with the same weights as a run never interrupted.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.helpers.stages import TINY

ROOT = Path(__file__).resolve().parents[2]
STEPS = 12


def _command(data_dir: Path, tmp_path: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "atp.train", "stage=source", *TINY, f"paths.data_dir={data_dir}",
            f"paths.output_dir={tmp_path / 'out'}", f"trainer.max_steps={STEPS}",
            f"trainer.val_check_interval={STEPS}", "checkpoint_every=2", f"hydra.run.dir={run_dir}", *extra]


def _env() -> dict:
    return {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env())


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()}


def test_sigterm_saves_last_step_marks_manifest_and_resume_finishes(data_toy_root, tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr_file:  # a file, not a pipe: a full pipe would block the run
        process = subprocess.Popen(_command(data_toy_root, tmp_path, run_dir), cwd=ROOT, env=_env(),
                                   stdout=subprocess.DEVNULL, stderr=stderr_file)
        try:
            deadline = time.monotonic() + 240
            while not last.is_file():  # the first periodic checkpoint (step 2): training is under way
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 240 s"
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    stderr = log.read_text()

    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "stopped by SIGTERM" in errors[0] and "resume=true" in errors[0], stderr[-3000:]

    manifest = json.loads((run_dir / "manifest.json").read_text())
    step = manifest["stopped_at_step"]
    assert manifest["status"] == "interrupted" and 2 <= step < STEPS and manifest["stopped_by"] == "SIGTERM"
    assert f"after step {step} of {STEPS}" in errors[0]
    # last.ckpt is the step the run stopped at (saved on SIGTERM, not only the periodic step-2 file), and loads
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == step
    assert f"SIGTERM: saved step {step} to {last}" in (run_dir / "train.log").read_text()
    assert not (run_dir / "checkpoints" / "final.ckpt").exists()
    assert not list(run_dir.rglob(".*.tmp"))

    resumed = _run(_command(data_toy_root, tmp_path, run_dir, "resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stderr + resumed.stdout, resumed.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["steps"] == STEPS
    (stop,) = manifest["interruptions"]  # the finished manifest still says where it was stopped, and by what
    assert stop["step"] == step and stop["stopped_by"] == "SIGTERM" and stop["resumed_from"].endswith("last.ckpt")

    reference_dir = tmp_path / "uninterrupted"
    reference = _run(_command(data_toy_root, tmp_path, reference_dir))
    assert reference.returncode == 0, reference.stderr[-3000:]
    full = _weights(reference_dir / "checkpoints" / "final.ckpt")
    after_resume = _weights(run_dir / "checkpoints" / "final.ckpt")
    assert full.keys() == after_resume.keys()
    differing = [k for k in full if not torch.equal(full[k], after_resume[k])]
    assert not differing, differing[:5]
