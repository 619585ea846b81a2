"""Submitting ``python -m atp.train -m hydra/launcher=submitit_slurm ...`` and reading SLURM's view of a job."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.helpers.stages import TINY

ROOT = Path(__file__).resolve().parents[2]
SLURM_LOCAL = ROOT / "scripts" / "slurm_local.sh"
SLURM_CONF = Path(os.environ.get("ATP_SLURM_DIR", "/tmp/atp-slurm")) / "slurm.conf"

# One CPU, 1 GB and no GPU per task on the one-node SLURM (the launcher's defaults ask for a GPU node).
SLURM_LAUNCHER = ["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=null",
                  "hydra.launcher.tasks_per_node=1", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
                  "hydra.launcher.timeout_min=10"]


def env() -> dict:
    # SLURM passes the submitting environment (PYTHONPATH, SLURM_CONF) on to the job; one thread per process
    # keeps the weights bit-for-bit comparable with a run outside SLURM.
    return {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}


def train_args(data_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    return [*TINY, f"paths.data_dir={data_dir}", f"paths.output_dir={out_dir}", *extra]


def start(args: list[str], log: Path, module: str = "atp.train", extra_env: dict | None = None) -> subprocess.Popen:
    """``python -m <module> <args>`` in the background, stdout and stderr into ``log``."""
    with log.open("w") as handle:  # a file, not a pipe: a full pipe would block the run
        return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env={**env(), **(extra_env or {})},
                                stdout=handle, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: Path, timeout: float) -> int:
    """Wait for ``process`` (killed after ``timeout`` seconds) and return its exit status."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"still running after {timeout:.0f} s:\n{log.read_text()[-4000:]}") from None


def run(args: list[str], log: Path, timeout: float = 600, **kwargs) -> int:
    return finish(start(args, log, **kwargs), log, timeout)


def submitit_jobs(sweep_dir: Path) -> list[str]:
    """SLURM job ids of a sweep, from submitit's folders: ``.submitit/<id>`` for one job, ``<id>_<task>`` for the
    tasks of a job array (whose ``.submitit/<id>`` holds only the submission script)."""
    names = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir()]
    tasks = sorted(n for n in names if re.fullmatch(r"\d+_\d+", n))
    return tasks or sorted(n for n in names if n.isdigit())


def scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job <id>`` as a dict (SLURM keeps finished jobs for MinJobAge seconds)."""
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return dict(token.split("=", 1) for token in out.split() if "=" in token)


def finished_job(job_id: str, timeout: float = 120) -> dict[str, str]:
    """``scontrol_job`` once SLURM has ended the job: submitit's result file (what the submitting command
    waits for) is written by task 0 before the other tasks and the job step have ended."""
    wait_for(lambda: scontrol_job(job_id)["JobState"] not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"),
             timeout, f"end of SLURM job {job_id}")
    return scontrol_job(job_id)


def wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"exited ({process.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.5)


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if torch.is_tensor(v)}
