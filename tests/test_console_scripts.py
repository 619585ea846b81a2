"""The console scripts of pyproject's [project.scripts], run from outside the checkout as users run them.

``conf/`` lives at the repository root, outside the package: the Hydra entry points must find it by
absolute path (``atp.cli.hydra_entry``), not relative to the working directory.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _script(name: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name(name)
    if not script.is_file():
        pytest.skip(f"{name} is not installed beside {sys.executable} (pip install -e .)")
    environment = {k: v for k, v in os.environ.items() if k != "ATP_CONF_DIR"}
    environment.update({"OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", **(env or {})})
    return subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=environment)


@pytest.mark.parametrize(("name", "args", "expected"), [
    ("atp-train", ["--cfg", "job", "stage=teach", "dataset=toy"], ["stage:", "name: teach", "name: toy"]),
    ("atp-evaluate", ["--cfg", "job", "weights=teacher"], ["ckpt: ???", "weights: teacher"]),
    ("atp-convert", ["--help"], ["usage:", "--which"]),
])
def test_console_script_runs_from_any_directory(name, args, expected, tmp_path):
    result = _script(name, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(text in result.stdout for text in expected), result.stdout[-3000:]
    assert not any(tmp_path.iterdir())  # printing the config writes no run directory


def test_missing_conf_dir_is_one_clear_line(tmp_path):
    missing = tmp_path / "no_conf"
    result = _script("atp-train", "--cfg", "job", cwd=tmp_path, env={"ATP_CONF_DIR": str(missing)})
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "conf/train.yaml" in errors[0] and str(missing) in errors[0], result.stderr
    assert "Traceback" not in result.stderr
