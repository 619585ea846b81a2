"""submitit's pre-timeout signal (SIGUSR2) mid-stage: save the step first, then let submitit requeue.

A fake "submitit" handler is installed before ``atp.train``'s main runs, as submitit's worker does: it
records what it finds and exits with a distinctive status. The stage must finish its step, save it to
``last.ckpt`` and mark the manifest ``interrupted`` before that handler runs. Without a previous handler
(and under DDP, where only one rank may have got the signal yet) it stops like on SIGTERM.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from atp.callbacks.signals import RequeueSignal, parse_signal
from atp.errors import UserError
from tests.run.test_sigterm import ROOT, _command, _env, _run

STEPS = 12
EVERY = 3
FAKE_EXIT = 77
# Installs the fake handler, then runs atp.train's main with the remaining arguments.
FAKE_SUBMITIT = """
import json, signal, sys
from pathlib import Path
marker, manifest = Path(sys.argv[1]), Path(sys.argv[2]) / "manifest.json"
def requeue(signum, frame):
    marker.write_text(json.dumps({"signal": signum, "status": json.loads(manifest.read_text())["status"]}))
    sys.exit(EXIT)
signal.signal(signal.SIGUSR2, requeue)
sys.argv = ["atp.train", *sys.argv[3:]]
from atp.train import main
main()
""".replace("EXIT", str(FAKE_EXIT))


def _signal_after_first_checkpoint(command: list[str], run_dir: Path, log: Path, child: bool = False) -> int:
    """Run ``command``, send SIGUSR2 once the first periodic ``last.ckpt`` exists (to the first child process,
    i.e. DDP rank 1, when ``child``), and return the exit status."""
    last = run_dir / "checkpoints" / "last.ckpt"
    with log.open("w") as stderr_file:  # a file, not a pipe: a full pipe would block the run
        process = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=stderr_file)
        try:
            deadline = time.monotonic() + 240
            while not last.is_file():  # the first periodic checkpoint (step EVERY)
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 240 s"
                time.sleep(0.02)
            if child:
                os.kill(int(Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()[0]),
                        signal.SIGUSR2)
            else:
                process.send_signal(signal.SIGUSR2)
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    return process.returncode


@pytest.mark.slow
def test_requeue_signal_saves_the_step_then_runs_the_previous_handler(data_toy_root, tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    marker = tmp_path / "requeued.json"
    args = _command(data_toy_root, tmp_path, run_dir, f"checkpoint_every={EVERY}")[3:]  # after "-m atp.train"
    log = tmp_path / "stderr.txt"
    returncode = _signal_after_first_checkpoint(
        [sys.executable, "-c", FAKE_SUBMITIT, str(marker), str(run_dir), *args], run_dir, log)
    stderr = log.read_text()

    assert returncode == FAKE_EXIT, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    # the previous handler ran, after the manifest was marked
    assert json.loads(marker.read_text()) == {"signal": signal.SIGUSR2, "status": "interrupted"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    step = manifest["stopped_at_step"]
    assert manifest["status"] == "interrupted" and EVERY < step < STEPS, manifest
    checkpoint = torch.load(last, weights_only=False)  # loads, and holds the step reached after the signal
    assert checkpoint["global_step"] == step
    assert f"SIGUSR2: saved step {step} to {last}" in (run_dir / "train.log").read_text()
    assert not (run_dir / "checkpoints" / "final.ckpt").exists()
    assert not list(run_dir.rglob(".*.tmp"))

    resumed = _run(_command(data_toy_root, tmp_path, run_dir, f"checkpoint_every={EVERY}", "resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stderr + resumed.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["steps"] == STEPS


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds DDP rank 1 through /proc")
def test_requeue_signal_on_one_ddp_rank_stops_both_after_the_same_step(data_toy_root, tmp_path):
    """No previous handler (SIG_DFL): like SIGTERM, exit 128 + 12 with one line, on both ranks."""
    run_dir = tmp_path / "run"
    log = tmp_path / "stderr.txt"
    command = _command(data_toy_root, tmp_path, run_dir, f"checkpoint_every={EVERY}", "trainer=ddp",
                       "trainer.accelerator=cpu", "trainer.devices=2")
    returncode = _signal_after_first_checkpoint(command, run_dir, log, child=True)
    stderr = log.read_text()

    assert returncode == 128 + signal.SIGUSR2, stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    step = manifest["stopped_at_step"]
    assert manifest["status"] == "interrupted" and EVERY < step < STEPS, manifest
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and len(set(errors)) == 1, stderr[-3000:]  # one per rank, the same step
    assert f"stopped by SIGUSR2 after step {step} of {STEPS}" in errors[0] and "resume=true" in errors[0]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step


def test_requeue_signal_config_and_handler_install_restore():
    assert parse_signal("SIGUSR2") == parse_signal("USR2") == parse_signal(int(signal.SIGUSR2)) == signal.SIGUSR2
    assert parse_signal(None) is None and parse_signal("null") is None
    with pytest.raises(UserError, match="requeue_signal=SIGNOPE"):
        parse_signal("SIGNOPE")

    def previous(signum, frame):
        pass

    before = signal.signal(signal.SIGUSR2, previous)
    try:
        requeue = RequeueSignal(signal.SIGUSR2)
        requeue.install()
        assert signal.getsignal(signal.SIGUSR2) == requeue._handle and requeue.previous is previous
        signal.raise_signal(signal.SIGUSR2)
        assert requeue.received
        requeue.restore()
        assert signal.getsignal(signal.SIGUSR2) is previous
        assert RequeueSignal(signal.SIGUSR2).hand_over() is False  # nothing installed: nothing to hand over to
    finally:
        signal.signal(signal.SIGUSR2, before)
