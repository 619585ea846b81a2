"""Every stage runs a few steps on the toy data with a tiny model; each hands its weights on."""

import csv
import json

import pytest
import torch

from atp.models.weights import read_checkpoint
from atp.run import pipeline, run_stage
from tests.helpers.stages import all_finite, logged_losses, stage_cfg


@pytest.fixture(scope="module")
def chain(data_toy_root, module_tmp):
    """source → align → teach → propagate, each started with init_from=auto (newest matching run)."""
    out = module_tmp
    runs = {}
    # conf_threshold=0: an untrained teacher is never 0.968-confident, and quality q = 0 would
    # give every hard pixel weight 0 (so no contrastive target at all).
    extra = {"propagate": ["stage.module.scl.start_step=1", "stage.module.ignore_bottom_rows=4",
                           "stage.module.ignore_top_rows=2", "stage.module.conf_threshold=0.0"],
             # a 4-step source model is near-uniform (p ≈ 1/19 > 0.04): no class would be negative
             "teach": ["stage.module.neg_threshold=0.07"]}
    for stage in ("source", "align", "teach", "propagate"):
        run_dir = out / "runs" / stage
        cfg = stage_cfg(stage, data_toy_root, out, run_dir, *extra.get(stage, []))
        runs[stage] = (run_stage(cfg, run_dir), run_dir)
    return runs


BASELINES = ("tent", "shot", "selftrain")


@pytest.fixture(scope="module")
def baselines(chain, data_toy_root, module_tmp):
    """tent, shot and selftrain, each started from the chain's source with init_from=auto (their predecessor)."""
    runs = {}
    # no warm-up, so 4 steps move the weights visibly; threshold 0: a 4-step source is never 0.968-confident
    extra = {"selftrain": ["stage.module.pos_threshold=0.0"]}
    for stage in BASELINES:
        run_dir = module_tmp / "runs" / stage
        cfg = stage_cfg(stage, data_toy_root, module_tmp, run_dir, "stage.module.schedule.warmup_steps=0",
                        *extra.get(stage, []))
        runs[stage] = (run_stage(cfg, run_dir), run_dir)
    return runs


@pytest.mark.parametrize("stage", BASELINES)
def test_baseline_runs_from_source_and_hands_on_its_weights(chain, baselines, stage):
    manifest, run_dir = baselines[stage]
    source_dir = chain["source"][1]
    assert manifest["status"] == "complete" and manifest["steps"] == 4
    assert manifest["init_run"] == str(source_dir)
    losses = logged_losses(run_dir)
    assert losses, "no loss was logged"
    for name, values in losses.items():
        assert len(values) == 4 and all_finite(values) and len(set(values)) > 1, (name, values)
    final = run_dir / "checkpoints" / "final.ckpt"
    assert manifest["final_ckpt"] and pipeline.manifest_checkpoint({**manifest, "_dir": str(run_dir)}) == final.resolve()
    before = read_checkpoint(source_dir / "checkpoints" / "final.ckpt", which="student")
    after = read_checkpoint(final, which="student")
    moved = {k for k in before if k.endswith(("weight", "bias")) and not torch.equal(before[k], after[k])}
    # tent: norm affine parameters only; shot: the classifier kept; selftrain: everything on the prediction path
    assert ("decode_head.conv_seg.weight" in moved) == (stage == "selftrain")
    assert ("encoder.patch_embed1.proj.weight" in moved) == (stage != "tent")
    assert "encoder.norm4.weight" in moved and not any(k.startswith("proj_head.") for k in moved)
    if stage == "selftrain":  # the share of pixels above pos_threshold (0 here: all of them)
        rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
        assert [float(r["train/pseudo/kept"]) for r in rows if r.get("train/pseudo/kept")] == [1.0] * 4


@pytest.mark.parametrize("stage", ["source", "align", "teach", "propagate"])
def test_stage_losses_are_finite_and_change(chain, stage):
    manifest, run_dir = chain[stage]
    assert manifest["status"] == "complete" and manifest["steps"] == 4
    losses = logged_losses(run_dir)
    assert losses, "no loss was logged"
    for name, values in losses.items():
        assert len(values) == (3 if name == "scl" else 4), name  # scl starts at step 1
        assert all_finite(values), (name, values)
        assert len(set(values)) > 1, f"{stage} loss {name} never changed: {values}"
    assert "mIoU/all19" in manifest["metrics"] and "pixel_acc" in manifest["metrics"]


def test_each_stage_starts_from_its_predecessor(chain):
    for stage, previous in (("align", "source"), ("teach", "align"), ("propagate", "teach")):
        manifest, _ = chain[stage]
        _, previous_dir = chain[previous]
        assert manifest["init_run"] == str(previous_dir)
        assert manifest["init_from"] == str((previous_dir / "checkpoints" / "final.ckpt").resolve())


def test_propagate_ranked_the_target_and_saved_prototypes(chain, data_toy_root):
    manifest, run_dir = chain["propagate"]
    split = run_dir / manifest["artefacts"]["split_dir"]
    easy = (split / "easy.txt").read_text().split()
    hard = (split / "hard.txt").read_text().split()
    assert len(easy) == 2 and len(hard) == 6  # 8 target-train images, lowest 30 % → 2 easy
    assert not set(easy) & set(hard)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state["prototypes.count"].sum() > 0
    assert any(k.startswith("teacher.model.") for k in state)


def test_teacher_is_saved_and_differs_from_student(chain):
    _, run_dir = chain["teach"]
    ckpt = run_dir / "checkpoints" / "final.ckpt"
    student = read_checkpoint(ckpt, which="student")
    teacher = read_checkpoint(ckpt, which="teacher")
    assert student.keys() == teacher.keys()
    name = "decode_head.conv_seg.weight"
    assert not torch.equal(student[name], teacher[name])


def test_manifest_is_valid_json_with_history(chain):
    _, run_dir = chain["teach"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["history"][-1]["step"] == 4
    assert pipeline.manifest_checkpoint({**manifest, "_dir": str(run_dir)}).is_file()


def test_teach_logs_every_interval_with_class_wise_positives(chain, data_toy_root, tmp_path):
    """Logging every 2nd step computes what it logs (q) on the steps that log, and the class-wise
    positive selection keeps training finite."""
    source_ckpt = pipeline.manifest_checkpoint(chain["source"][0] | {"_dir": str(chain["source"][1])})
    run_dir = tmp_path / "teach"
    cfg = stage_cfg("teach", data_toy_root, tmp_path, run_dir,
                    f"init_from={source_ckpt}", "trainer.log_every_n_steps=2", "stage.module.pos_threshold=null",
                    "stage.module.pos_class_keep=0.5", "stage.module.neg_threshold=0.07")
    run_stage(cfg, run_dir)
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    quality = [float(r["train/pseudo/quality"]) for r in rows if r.get("train/pseudo/quality")]
    assert quality and all(0.0 <= q <= 1.0 for q in quality)  # q was computed on the steps that log
    lr = [float(r["train/lr"]) for r in rows if r.get("train/lr")]
    assert len(set(lr)) == 2  # logged after steps 2 and 4 only (Lightning repeats a step's values)
