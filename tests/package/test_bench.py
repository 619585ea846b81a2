"""atp.bench helpers and scripts/gpu_check.sh --dry-run (composition only, no model is built)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from atp.bench import cli, data, records, stages

ROOT = Path(__file__).resolve().parents[2]


def test_records_and_targets():
    assert records.at_most("x", 1.05, 1.10) == {"metric": "x", "value": 1.05, "low": None, "high": None,
                                             "target": "<= 1.1", "meets": True}
    assert records.at_least("y", 2.0, 3.0, "x")["meets"] is False
    assert records.record("z", 1.0)["meets"] is None
    assert "NO" in records.format_table([records.at_most("x", 2.0, 1.1)])


def test_a_target_is_met_only_across_its_whole_spread():
    ratios = [1.02, 1.05, 1.12, 1.04, 1.03]
    row = records.at_most("teach/ratio", ratios, 1.10)
    assert (row["value"], row["low"], row["high"], row["meets"]) == (1.04, 1.02, 1.12, False)  # median passes, max not
    assert records.at_most("teach/ratio", [1.02, 1.09], 1.10)["meets"] is True
    assert records.at_least("data", [2.9, 4.0, 5.0], 3.0)["meets"] is False  # the smallest decides
    assert records.at_most("teach/ratio", ratios, 1.10, judge=False)["meets"] is None  # --quick judges nothing
    assert "1.02-1.12" in records.format_table([row])


def test_block_ratios_pair_real_and_bare_steps_block_by_block():
    real = [2.0, 2.2, 2.1, 3.0, 3.3, 3.1]  # the machine slowed down between the blocks: both kinds of step did
    bare = [2.0, 2.0, 2.0, 3.0, 3.0, 3.0]
    assert records.block_ratios(real, bare, 2) == pytest.approx([2.1 / 2.0, 3.1 / 3.0])
    assert records.block_medians(real, 3) == pytest.approx([2.1, 2.55, 3.2])
    assert len(records.block_ratios(real[:5], bare[:5], 2)) == 2  # a remainder step is dropped, not a block


def test_pipeline_geometry_scales_the_paper_pipeline_to_the_crop():
    assert data.pipeline_geometry(640) == ((2048, 1024), (1280, 640), (640, 640))
    assert data.pipeline_geometry(128) == ((410, 205), (256, 128), (128, 128))


def test_quick_defaults_and_stage_validation():
    args = cli.parse_args(["--quick"])
    assert (args.model, args.crop, args.blocks, args.stage_list) == ("mitb0_lite", 64, 2, list(stages.ALL_STAGES))
    assert cli.parse_args(["--quick", "--crop", "96"]).crop == 96
    assert (cli.parse_args([]).steps, cli.parse_args([]).blocks) == (30, 5)  # make bench
    with pytest.raises(SystemExit):
        cli.parse_args(["--stages", "source,bogus"])
    with pytest.raises(SystemExit):
        cli.parse_args(["--steps", "4", "--blocks", "5"])


def test_make_bench_runs_the_quoted_configuration():
    recipe = (ROOT / "Makefile").read_text().split("\nbench:", 1)[1].split("\n\n", 1)[0]
    assert "-m atp.bench --model mitb0_lite --crop 128 --batch 2 --json outputs/bench.json" in recipe
    assert "--quick" not in recipe


@pytest.mark.parametrize("stage", stages.ALL_STAGES)
def test_synthetic_batches_have_the_datamodule_structure(stage):
    import torch

    batch = stages.synthetic_batch(stage, 2, 16, 19, torch.Generator().manual_seed(0))
    images = batch["easy"]["img"] if stage == "propagate" else batch["img"]
    assert tuple(images.shape) == (2, 3, 16, 16)
    assert ("label" in batch) == (stage == "source")


def test_gpu_check_dry_run_composes_every_stage_and_runs_the_step_checks(tmp_path):
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "OUT_DIR": str(tmp_path), "PYTHON": sys.executable,
             "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--model mitb5 --crop 640 --batch 2 --precision bf16-mixed --device cuda" in result.stdout
    for stage in stages.ALL_STAGES:
        assert f"[dry-run] stage={stage} model=mit_b5 crop=640" in result.stdout
        # the step checks ran the stage's real training steps (a logging one and one the sync mode would watch)
        assert f"[step-check] stage={stage} steps=3 sync-checked steps=[1] logging steps=[2]" in result.stdout
        assert f"{stage}/peak_rss_mib" in result.stdout
    assert "teach pseudo-labels fp32 vs bf16" in result.stdout
    for figure in ("label_agreement", "threshold_flips", "quality_fp32", "quality_bf16"):
        assert f"teach/bf16_vs_fp32/{figure}" in result.stdout
