"""``atp.evaluation.summary`` on hand-made manifests: the per-stage statistics over seeds, worked out by hand."""

import json
import math

import pytest

from atp.evaluation.summary import BEST_OF_RUN_NOTE, aggregate, collect, history_spread, write_summary
from atp.run import pipeline


def _run(root, name, stage, seed, miou, *, dataset="toy", status="complete", history=(), finished_at=100.0):
    manifest = {"stage": stage, "dataset": dataset, "model": "mitb0_lite", "seed": seed, "status": status,
                "chain_key": f"{dataset}-{seed}", "started_at": finished_at - 10, "finished_at": finished_at,
                "steps": 10, "final_ckpt": "checkpoints/final.ckpt",
                "history": [{"step": s, "mIoU/all19": v} for s, v in history]}
    if miou is not None:
        manifest["metrics"] = {"mIoU/all19": miou, "pixel_acc": 80.0}
    pipeline.write_manifest(root / name, manifest)


@pytest.fixture
def sweep(tmp_path):
    _run(tmp_path, "0", "source", 1, 30.0, history=[(5, 31.0), (10, 30.0)])
    _run(tmp_path, "1", "source", 2, 34.0, history=[(5, 33.0), (10, 34.0)])
    _run(tmp_path, "2", "align", 1, 40.0, history=[(10, 40.0)])
    _run(tmp_path, "3", "align", 2, 41.0, history=[(10, 41.0)])
    _run(tmp_path, "old", "align", 1, 10.0, finished_at=50.0)  # an older run of seed 1: not counted
    _run(tmp_path, "4", "teach", 1, 50.0)  # no history: no best of run
    _run(tmp_path, "5", "teach", 2, None, status="failed")  # listed, not aggregated
    _run(tmp_path, "6", "source", 1, 20.0, dataset="toy_b")
    return tmp_path


def test_aggregate_gives_mean_sample_std_and_n_per_stage_and_dataset(sweep):
    rows = {(r["dataset"], r["stage"]): r for r in aggregate(collect(sweep))}
    assert list(rows) == [("toy", "source"), ("toy", "align"), ("toy", "teach"), ("toy_b", "source")]
    source = rows["toy", "source"]
    # 30 and 34: mean 32, sample variance ((−2)² + 2²) / (2 − 1) = 8
    assert source["final"]["mean"] == pytest.approx(32.0)
    assert source["final"]["std"] == pytest.approx(math.sqrt(8))
    assert source["final"]["n"] == 2 and source["seeds"] == [1, 2]
    # best of run: 31 (step 5) and 34 (step 10): mean 32.5, variance (1.5² + 1.5²) / 1 = 4.5
    assert source["best_of_run"]["mean"] == pytest.approx(32.5)
    assert source["best_of_run"]["std"] == pytest.approx(math.sqrt(4.5))
    align = rows["toy", "align"]
    assert (align["final"]["mean"], align["final"]["n"]) == (pytest.approx(40.5), 2)  # the older 10.0 is not counted
    assert align["final"]["std"] == pytest.approx(math.sqrt(0.5))
    teach = rows["toy", "teach"]
    assert teach["final"] == {"mean": 50.0, "std": None, "n": 1} and teach["best_of_run"] is None
    assert rows["toy_b", "source"]["final"] == {"mean": 20.0, "std": None, "n": 1}
    assert {r["weights"] for r in rows.values()} == {"student"}


def test_history_spread_is_mean_min_max_per_step(sweep):
    runs = [m for m in collect(sweep) if m["stage"] == "source" and m["dataset"] == "toy"]
    assert history_spread(runs) == [(5, 32.0, 31.0, 33.0), (10, 32.0, 30.0, 34.0)]


def test_write_summary_tables_json_and_plot(sweep):
    text = write_summary(sweep).read_text()
    assert "| source | toy | mitb0_lite | student | final (last step) | 32.00 ± 2.83 | 2 | 1, 2 | 32.50 ± 2.12 |" in text
    assert "| align | toy | mitb0_lite | student | final (last step) | 40.50 ± 0.71 | 2 | 1, 2 | 40.50 ± 0.71 |" in text
    assert "| teach | toy | mitb0_lite | student | final (last step) | 50.00 ± – | 1 | 1 | – |" in text
    assert BEST_OF_RUN_NOTE in text
    assert "| source | toy | mitb0_lite | 1 | 10 | 30.00 | 80.0 | 31.00 @ 5 | complete | 0 |" in text
    assert "| teach | toy | mitb0_lite | 2 | 10 | - | - | - | failed | 5 |" in text
    data = json.loads((sweep / "results.json").read_text())
    assert [(s["stage"], s["final"]["n"]) for s in data["stages"]] == [("source", 2), ("align", 2), ("teach", 1),
                                                                       ("source", 1)]
    assert len(data["runs"]) == 8
    assert (sweep / "miou_over_steps.png").stat().st_size > 0


@pytest.mark.slow
def test_two_seed_toy_sweep_reports_mean_and_std_per_stage(data_toy_root, tmp_path):
    import subprocess
    import sys

    import numpy as np

    from tests.helpers.stages import TINY

    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "atp.train", "-m", "stage=source,align", "seed=1,2", *TINY,
         f"paths.data_dir={data_toy_root}", f"paths.output_dir={tmp_path / 'out'}", f"hydra.sweep.dir={sweep}",
         "trainer.max_steps=2", "trainer.val_check_interval=2"],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = (sweep / "results.md").read_text()
    for stage in ("source", "align"):
        runs = [json.loads(p.read_text()) for p in sweep.glob("*/manifest.json")]
        values = [m["metrics"]["mIoU/all19"] for m in runs if m["stage"] == stage]
        assert len(values) == 2
        mean, std = np.mean(values), np.std(values, ddof=1)
        assert f"| {stage} | toy | {runs[0]['model']} | student | final (last step) | {mean:.2f} ± {std:.2f} | 2 | 1, 2 |" in text
