"""The one-node SLURM of ``scripts/slurm_local.sh`` for the cluster scenarios (``make test-cluster``).

Started once per session if it is not running already, and then stopped again; one that was already
running is left running.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.cluster.slurm_helpers import SLURM_CONF, SLURM_LOCAL


def _slurm_local(command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SLURM_LOCAL), command], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session", autouse=True)
def slurm():
    """SLURM_CONF set for this process and every command it starts (sbatch, scontrol, the SLURM jobs)."""
    already = _slurm_local("status").returncode == 0
    if not already:
        started = _slurm_local("start")
        assert started.returncode == 0, f"{SLURM_LOCAL} start failed: {started.stderr.strip()}"
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(SLURM_CONF)
    yield
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    if not already:
        stopped = _slurm_local("stop")
        assert stopped.returncode == 0, stopped.stderr
