"""hydra-submitit-launcher (the ``slurm`` extra): both launcher configs compose with the plugin, and
``hydra/launcher=submitit_local`` runs a real job through submitit (pickled, in a process of its own).

The SLURM scenarios themselves are in tests/cluster (``make test-cluster``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from atp.config import CONF_DIR
from tests.helpers.stages import TINY

config = pytest.importorskip("hydra_plugins.hydra_submitit_launcher.config",
                             reason="the slurm extra is not installed: pip install -e '.[dev,slurm]'")

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = CONF_DIR / "hydra" / "launcher"


@pytest.mark.parametrize("name, schema", [("submitit_slurm", config.SlurmQueueConf),
                                          ("submitit_local", config.LocalQueueConf)])
def test_launcher_config_sets_every_field_of_the_plugin(name, schema):
    """No `defaults: [<plugin config>]` (a file of the same name would extend itself, endlessly), so every
    field must be here, under the plugin's names, and the composed launcher must match the schema."""
    ours = OmegaConf.load(LAUNCHERS / f"{name}.yaml")
    assert "defaults" not in ours
    assert set(ours) == {f.name for f in dataclasses.fields(schema)}
    assert ours._target_ == schema._target_
    OmegaConf.merge(OmegaConf.structured(schema), ours)  # types agree with the plugin's


def test_submitit_slurm_composes_as_the_launcher(tmp_path):
    """What ``hydra/launcher=submitit_slurm`` gives the plugin, through the real entry point (no submission)."""
    result = subprocess.run(
        [sys.executable, "-m", "atp.train", "hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=4",
         "--cfg", "hydra", "-p", "hydra.launcher"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    launcher = OmegaConf.create(result.stdout.split("\n", 1)[1])  # after the "# @package" line
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 4 and launcher.max_num_timeout == 10 and launcher.signal_delay_s == 120


@pytest.mark.slow
def test_submitit_local_runs_a_sweep_job(data_toy_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "atp.train", "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}",
         "stage=source", *TINY, f"paths.data_dir={data_toy_root}", f"paths.output_dir={tmp_path / 'out'}",
         "trainer.max_steps=2", "trainer.val_check_interval=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((sweep / "0_source" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["steps"] == 2
    # submitit ran the job: its folder holds the pickled job, its result and the job's own log
    (job,) = [p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]  # the job id: a process id here
    assert (job / f"{job.name}_submitted.pkl").is_file()
    with (job / f"{job.name}_0_result.pkl").open("rb") as handle:
        assert pickle.load(handle)[0] == "success"
    assert "stage=source" in (job / f"{job.name}_0_log.err").read_text() + (job / f"{job.name}_0_log.out").read_text()
    assert "| source |" in (sweep / "results.md").read_text()
