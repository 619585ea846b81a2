"""A built wheel installed with pip (not editable), its console scripts run from an empty directory: the configs
ship inside the package, and nothing reads the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.stages import REPO_ROOT, TINY

pytestmark = pytest.mark.slow


def _run(command: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel of this checkout, installed into its own folder with pip (the already-installed dependencies are
    reused: --no-deps), and an environment in which that folder's atp comes before the checkout's."""
    root = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist",
                  REPO_ROOT], cwd=root, env=dict(os.environ))
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("atp-*.whl")
    site = root / "site"
    install = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel], cwd=root,
                   env=dict(os.environ))
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return wheel, site, env


def test_the_wheel_holds_the_config_tree(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {name.removeprefix("atp/conf/") for name in names if name.startswith("atp/conf/")}
    expected = {path.relative_to(REPO_ROOT / "src" / "atp" / "conf").as_posix()
                for path in (REPO_ROOT / "src" / "atp" / "conf").rglob("*.yaml")}
    assert expected and shipped == expected


def test_commands_of_the_installed_wheel_run_from_an_empty_directory(installed, tmp_path):
    _, site, env = installed
    work = tmp_path / "work"
    work.mkdir()
    where = _run([sys.executable, "-c", "import atp; print(atp.__file__)"], cwd=work, env=env)
    assert Path(where.stdout.strip()).is_relative_to(site), where  # not the checkout's sources
    scripts = site / "bin"
    # a two-step toy stage: data generated, trained, validated, checkpointed, all under the working directory
    tiny = [o for o in TINY if not o.startswith("experiment=")]
    train = _run([scripts / "atp-train", "experiment=toy_cpu", "stage=source", *tiny, "trainer.max_steps=2",
                  "trainer.val_check_interval=2", "paths.data_dir=data", "hydra.run.dir=run"], cwd=work, env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    manifest = json.loads((work / "run" / "manifest.json").read_text())
    assert (manifest["status"], manifest["steps"]) == ("complete", 2)
    assert (work / "run" / "checkpoints" / "final.ckpt").is_file() and (work / "data" / "toy").is_dir()
    for name, args, expected in (("atp-evaluate", ["--cfg", "job", "weights=teacher"], "weights: teacher"),
                                 ("atp-predict", ["--cfg", "job"], "ckpt:"),
                                 ("atp-convert", ["--help"], "--which")):
        result = _run([scripts / name, *args], cwd=work, env=env)
        assert result.returncode == 0 and expected in result.stdout, (name, result.stderr[-2000:])
