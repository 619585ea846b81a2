"""atp.bench helpers and scripts/gpu_check.sh --dry-run (composition only, no model is built)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from atp import bench

ROOT = Path(__file__).resolve().parents[1]


def test_records_and_targets():
    assert bench.at_most("x", 1.05, 1.10) == {"metric": "x", "value": 1.05, "target": "<= 1.1", "meets": True}
    assert bench.at_least("y", 2.0, 3.0, "x")["meets"] is False
    assert bench.record("z", 1.0)["meets"] is None
    assert "NO" in bench.format_table([bench.at_most("x", 2.0, 1.1)])


def test_quick_defaults_and_stage_validation():
    args = bench.parse_args(["--quick"])
    assert (args.model, args.crop, args.stage_list) == ("mitb0_lite", 64, list(bench.ALL_STAGES))
    assert bench.parse_args(["--quick", "--crop", "96"]).crop == 96
    with pytest.raises(SystemExit):
        bench.parse_args(["--stages", "source,bogus"])


@pytest.mark.parametrize("stage", bench.ALL_STAGES)
def test_synthetic_batches_have_the_datamodule_structure(stage):
    import torch

    batch = bench.synthetic_batch(stage, 2, 16, 19, torch.Generator().manual_seed(0))
    images = batch["easy"]["img"] if stage == "propagate" else batch["img"]
    assert tuple(images.shape) == (2, 3, 16, 16)
    assert ("label" in batch) == (stage == "source")


def test_gpu_check_dry_run_composes_every_stage(tmp_path):
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "OUT_DIR": str(tmp_path), "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--model mitb5 --crop 640 --batch 2 --precision bf16-mixed --device cuda" in result.stdout
    for stage in bench.ALL_STAGES:
        assert f"[dry-run] stage={stage} model=mit_b5 crop=640" in result.stdout
