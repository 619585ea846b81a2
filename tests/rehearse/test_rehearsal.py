"""``python -m atp.rehearse``: the paper recipe at the real sizes.

The slow test runs the rehearsal in this process (the command runs one process per command; the steps, overrides
and checks are the same) with MiT-B0 on the Cityscapes → ACDC fog chain: every stage, every evaluation mode, the
export and predict, and asserts every check the rehearsal makes. The others test its parts without a model.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path

import pytest
import torch

from atp.rehearse import checks, cli, plan, probe, runner

ROOT = Path(__file__).resolve().parents[2]
#: MiT-B0 with the narrow head: with mitb0's 256-wide head one 640² step of batch 1 costs ~6 s on the 2-core
#: CPU (its 3×3 bottleneck at 160² is ~60 GFLOP a pass), which alone would take the test past its minute.
TEST_MODEL = "mitb0_lite"


@pytest.mark.slow
def test_rehearsal_at_real_sizes_passes_every_check(tmp_path):
    # One chain keeps the test near half a minute on an idle machine: Cityscapes → ACDC fog, whose stages hold the
    # path no toy run takes (whole 1280×720 images the stage crops to 640²); `make rehearse` runs both chains.
    options = plan.Options(model=TEST_MODEL, steps=1, batch=1, out=tmp_path / "rehearse", datasets=("cs2acdc_fog",),
                           eval_images=1, video_frames=2, in_process=True)
    record = cli.rehearse(options)

    assert record["ok"], record["failures"]
    names = {c["name"] for c in record["checks"]}
    for stage in plan.CHAIN:
        assert f"cs2acdc_fog/{stage}: shapes at the stage's boundaries" in names
    assert "cs2acdc_fog/propagate: hood rows ignored at 640×640" in names
    for mode in plan.EVAL_MODES:
        assert f"cs2acdc_fog/eval-{mode}: scored at 1920×1080" in names
    assert "cs2acdc_fog/export-acdc: files at the server's 1920×1080" in names
    assert "cs2acdc_fog/align-rerun: the same seed gives the same losses as cs2acdc_fog/align" in names
    assert "predict: outputs at the input's size" in names
    assert all(step["status"] == "ok" for step in record["steps"])

    stages = {s["name"]: s for s in record["stages"]}
    source = stages["cs2acdc_fog/source"]["shapes"]
    assert source["batch"] == {"img": [1, 3, 640, 640], "label": [1, 640, 640]}  # of 2048×1024 → 1280×640
    align = stages["cs2acdc_fog/align"]["shapes"]
    assert align["batch"] == {"img": [1, 3, 720, 1280]}  # the whole image: the stage crops (spec §2.7)
    assert align["pseudo_labels"][0] == {"input": [1, 3, 720, 1280], "crop": [1, 3, 640, 640], "labels": [1, 640, 640]}
    assert align["student_encoder_inputs"] == [[1, 3, 640, 640]]
    hard = stages["cs2acdc_fog/propagate"]["hard_weights"][0]
    assert hard["shape"] == [1, 640, 640] and hard["zeroed_rows"] == [[0, 15], [520, 640]]
    assert all(s["s_per_step"] > 0 and s["peak_rss_mib"] > 0 for s in record["stages"])
    assert (options.out / "rehearsal.md").read_text().startswith("# Full-size rehearsal: passed")


def test_target_train_images_fill_an_easy_and_a_hard_batch():
    assert plan.train_images_needed(1) == 4  # ⌊0.3·4⌋ = 1 easy, 3 hard
    assert plan.train_images_needed(2) == 7  # ⌊0.3·7⌋ = 2 easy, 5 hard
    spec = plan.tree_spec(plan.Options(batch=2, datasets=("cs2acdc_fog",)))
    assert (spec.gta, spec.cityscapes["train"], spec.acdc["train"], spec.condition) == (0, 7, 7, "fog")


def test_the_plan_overrides_only_what_the_rehearsal_may(tmp_path):
    steps = plan.build_plan(plan.Options(out=tmp_path, datasets=("gta2cs",)))
    allowed = ("stage=", "model=", "dataset=", "paths.data_dir=", "hydra.run.dir=", "trainer=", "trainer.precision=",
               "trainer.max_steps=", "trainer.val_check_interval=", "data.num_workers=", "init_from=",
               "+callbacks.rehearsal.")
    trains = [s for s in steps if s.kind == "train"]
    assert [s.stage for s in trains] == [*plan.CHAIN, "align"]
    for step in trains:
        assert all(o.startswith(allowed) for o in step.overrides), step.overrides
    propagate = trains[3]
    assert f"init_from={trains[2].out_dir / 'checkpoints' / 'final.ckpt'}" in propagate.overrides
    assert f"init_from={trains[0].out_dir / 'checkpoints' / 'final.ckpt'}" in trains[4].overrides  # the rerun


def test_dry_run_composes_the_gpu_rehearsal_without_building_anything(tmp_path, capsys):
    out = tmp_path / "rehearse"
    status = cli.main(["--dry-run", "--device", "cuda", "--precision", "bf16-mixed", "--model", "mitb5", "--batch", "2",
                       "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0 and not out.exists()
    for dataset in ("gta2cs", "cs2acdc_fog"):
        for stage in plan.CHAIN:
            assert re.search(rf"\[dry-run\] {dataset}/{stage}: atp.train stage={stage} model=mit_b5 dataset={dataset} "
                             r"accelerator=gpu precision=bf16-mixed steps=2 batch=2 crop=640×640", printed)
    assert "hard 1920×1080 → scale [1280, 720] → loader 1280×720" in printed  # ACDC: the stage takes the crop
    assert "[dry-run] cs2acdc_fog/export-acdc: atp.evaluate export=acdc target_test 1920×1080" in printed
    assert "[dry-run] predict: atp.predict street_2048x1024.png 2048×1024" in printed


def test_gpu_check_and_make_rehearse_run_the_rehearsal():
    script = (ROOT / "scripts" / "gpu_check.sh").read_text()
    assert "REHEARSE_ARGS=(--model mitb5 --batch 2 --precision bf16-mixed --device cuda" in script
    assert '-m atp.rehearse "${REHEARSE_ARGS[@]}" --dry-run' in script
    assert re.search(r'timeout \d+ "\$PYTHON" -m atp.rehearse "\$\{REHEARSE_ARGS\[@\]\}"', script)
    recipe = (ROOT / "Makefile").read_text().split("\nrehearse:", 1)[1].split("\n\n", 1)[0]
    assert "-m atp.rehearse --model mitb5" in recipe


def test_hood_rows_check_reads_the_zeroed_rows():
    weights = torch.full((2, 640, 640), 0.25)
    weights[:, :15] = 0
    weights[:, 520:] = 0
    assert probe.zeroed_row_ranges(weights[0]) == [[0, 15], [520, 640]]
    assert probe.zeroed_row_ranges(torch.ones(4, 3)) == []


def _propagate_cfg(tmp_path):
    from atp.config import compose_cli

    return compose_cli(["stage=propagate", "model=mitb0", "dataset=cs2acdc_fog", f"paths.data_dir={tmp_path}"], "train")


def test_shape_check_finds_an_uncropped_student_input(tmp_path):
    cfg = _propagate_cfg(tmp_path)
    expected = checks.expected_shapes(cfg, "cs2acdc_fog", "propagate", 2)
    assert expected["batch"] == {"easy": {"img": [2, 3, 640, 640]}, "hard": {"img": [2, 3, 720, 1280]}}
    good = {"shapes": {
        "batch": expected["batch"], "student_encoder_inputs": [[2, 3, 640, 640]] * 2,
        "pseudo_labels": [{"input": [2, 3, 720, 1280], "crop": [2, 3, 640, 640], "labels": [2, 640, 640]}],
        "training_labels": [[2, 640, 640]] * 2,
        "prototype_update": {"features": [2, 512, 160, 160], "labels": [2, 160, 160]},
        "prototypes": {"mean": [19, 512], "classes_seen": 5},
        "classmix_masks": {"shape": [2, 640, 640], "dtype": "bool", "pasted_share": 0.4}}}
    assert checks.shape_problems(good, expected) == []
    bad = {"shapes": {**good["shapes"], "student_encoder_inputs": [[2, 3, 720, 1280]],
                      "pseudo_labels": [{"input": [2, 3, 720, 1280], "crop": [2, 3, 720, 1280],
                                         "labels": [2, 720, 1280]}]}}
    problems = checks.shape_problems(bad, expected)
    assert any("student inputs" in p for p in problems)
    assert any("class-balanced" in p for p in problems)


def test_hood_rows_check_fails_on_other_rows(tmp_path):
    cfg = _propagate_cfg(tmp_path)
    options = plan.Options(steps=1, batch=2)
    step = plan.Step("x/propagate", "train", "atp.train", [], tmp_path, "cs2acdc_fog", "propagate")
    entry = {"shape": [2, 640, 640], "zeroed_rows": [[0, 15], [520, 640]], "weights_are_quality_outside_those_rows": True,
             "quality": [0.5, 0.5]}
    assert checks.check_hood_rows(step, {"hard_weights": [entry]}, cfg, options, "log").ok
    shifted = {**entry, "zeroed_rows": [[0, 15], [600, 640]]}
    assert not checks.check_hood_rows(step, {"hard_weights": [shifted]}, cfg, options, "log").ok


def test_peak_rss_is_the_commands_own_not_the_launchers(tmp_path):
    """Linux folds the launcher's peak into a child's ru_maxrss at exec; the rehearsal reads the child's VmHWM."""
    step = plan.Step("sleep", "check", "timeit", ["-n", "1", "-r", "1", "import time; time.sleep(0.6)"], tmp_path)
    status, wall_s, peak_mib = runner.run_subprocess(step, tmp_path / "sleep.log")
    own_peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process imported torch
    assert status == 0 and wall_s >= 0.6
    assert peak_mib < 100 < own_peak_mib


def test_out_of_memory_is_named_with_its_peak(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("RuntimeError: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory\n")
    assert runner.looks_out_of_memory(1, log)
    assert runner.looks_out_of_memory(-9, tmp_path / "missing.log")  # the kernel's OOM killer
    log.write_text("ValueError: something else\n")
    assert not runner.looks_out_of_memory(1, log)


def test_a_folder_of_something_else_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    assert cli.main(["--out", str(tmp_path), "--model", "mitb0"]) == 2
    assert (tmp_path / "mine.txt").read_text() == "keep"


def _gpu_report() -> dict:
    stage = {"name": "cs2acdc_fog/align", "s_per_step": 1.5, "first_step_s": 2.0, "peak_rss_mib": 2048.0,
             "peak_gpu_gib": 4.5, "wall_s": 30.0, "shapes": {}}
    return {"ok": True, "complete": True, "date": "2026-12-07", "total_s": 60.0, "commands": 2, "failures": [],
            "options": {"model": "mitb5", "batch": 2, "precision": "bf16-mixed", "device": "cuda", "steps": 2,
                        "datasets": ["cs2acdc_fog"], "in_process": False},
            "machine": {"host": "h", "cpu": "c", "cores": 16, "ram_gib": 128, "gpu": "NVIDIA H100",
                        "omp_num_threads": None, "load_average_at_start": [0.0, 0.0, 0.0]},
            "data": {"write_s": 1.0, "images": 5}, "steps": [], "checks": [],
            "stages": [stage, {**stage, "name": "cs2acdc_fog/propagate", "peak_gpu_gib": None}]}


def test_a_gpu_run_prints_each_stages_peak_gpu_memory_against_daformers_figure():
    from atp.rehearse import report

    # 4.5 GiB = 4.5 · 2^30 B = 4.83 GB; 4.8318 / 9.7 = 0.498. A stage without a figure gets no line.
    assert report.gpu_memory_lines(_gpu_report()) == [
        "peak GPU memory cs2acdc_fog/align: 4.50 GiB = 4.83 GB (0.50× DAFormer's published 9.7 GB at batch 2)"]
    text = report.markdown(_gpu_report())
    assert "| run | s/step | first step s | peak RSS GiB | peak GPU GiB | wall s |" in text
    assert "| cs2acdc_fog/align | 1.50 | 2.00 | 2.00 | 4.50 | 30.0 |" in text
    cpu = _gpu_report()
    cpu["options"]["device"] = "cpu"
    assert "peak GPU" not in report.markdown(cpu)
