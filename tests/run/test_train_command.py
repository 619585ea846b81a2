"""``python -m atp.train`` as users run it: a multirun chain, W&B offline, and early clear errors."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.stages import TINY

ROOT = Path(__file__).resolve().parents[2]


def _train(*args: str, env: dict | None = None, drop_env: tuple = (), timeout: int = 600):
    environment = {k: v for k, v in os.environ.items() if k not in drop_env}
    environment.update({"HYDRA_FULL_ERROR": "0", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "atp.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env=environment,
    )


def _tiny(data_dir: Path, out: Path) -> list[str]:
    return [*TINY, f"paths.data_dir={data_dir}", f"paths.output_dir={out}", "trainer.max_steps=3",
            "trainer.val_check_interval=3"]


@pytest.mark.slow
def test_multirun_chain_hands_weights_from_stage_to_stage(data_toy_root, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    result = _train("-m", "stage=source,align,teach,propagate", *_tiny(data_toy_root, tmp_path / "out"),
                    f"hydra.sweep.dir={sweep}", "per_stage.propagate.stage.module.scl.start_step=1")
    assert result.returncode == 0, result.stderr[-3000:]
    manifests = {}
    for path in sweep.glob("*/manifest.json"):
        manifest = json.loads(path.read_text())
        manifests[manifest["stage"]] = (manifest, path.parent)
    assert set(manifests) == {"source", "align", "teach", "propagate"}
    assert all(m["status"] == "complete" for m, _ in manifests.values())
    assert manifests["source"][0]["init_from"] is None
    for stage, previous in (("align", "source"), ("teach", "align"), ("propagate", "teach")):
        expected = (manifests[previous][1] / "checkpoints" / "final.ckpt").resolve()
        assert manifests[stage][0]["init_from"] == str(expected), stage
    keys = {m["chain_key"] for m, _ in manifests.values()}
    assert len(keys) == 1
    results = (sweep / "results.md").read_text()
    for stage in ("source", "align", "teach", "propagate"):
        assert f"| {stage} | toy |" in results
    assert (sweep / "miou_over_steps.png").is_file()
    assert json.loads((sweep / "results.json").read_text())["runs"][-1]["stage"] == "propagate"

    # the demo's evaluation of the same sweep: student for every stage, EMA teacher for T and P
    from atp.demo import main as demo_main

    overrides = [o for o in _tiny(data_toy_root, tmp_path / "out") if not o.startswith("experiment=")]
    assert demo_main(["--out", str(sweep), "--eval-only", *overrides]) == 0
    table = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines() if line.split()[:1] in
            (["source"], ["align"], ["teach"], ["propagate"])}
    assert set(rows) == {"source", "align", "teach", "propagate"}
    assert rows["source"][-1] == "-" and rows["align"][-1] == "-"
    for stage in ("teach", "propagate"):
        teacher_metrics = json.loads((manifests[stage][1] / "eval_teacher" / "metrics.json").read_text())
        assert teacher_metrics["weights"] == "teacher"
        assert float(rows[stage][-1]) == pytest.approx(teacher_metrics["mIoU"]["all19"], abs=0.006)


@pytest.mark.slow
def test_wandb_logger_runs_offline_without_account(data_toy_root, tmp_path):
    run_dir = tmp_path / "run"
    # no account: no API key, no ~/.netrc, no mode forced from outside
    result = _train("stage=source", *_tiny(data_toy_root, tmp_path / "out"), "logger=wandb",
                    f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=true", env={"HOME": str(tmp_path)},
                    drop_env=("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "source (toy) steps" in result.stdout + result.stderr  # the progress bar names the stage
    assert "Epoch 0" not in result.stdout + result.stderr
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert any(offline_runs[0].glob("*.wandb")) or any(offline_runs[0].rglob("*.wandb"))


def test_stage_without_predecessor_stops_early_with_the_command(data_toy_root, tmp_path):
    result = _train("stage=teach", *_tiny(data_toy_root, tmp_path / "empty"), f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode == 2
    assert "python -m atp.train stage=align dataset=toy" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_stage_lists_the_choices(tmp_path):
    result = _train("stage=alignn", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "alignn" in result.stderr and "teach" in result.stderr and "propagate" in result.stderr


def test_missing_init_checkpoint_is_one_clear_line(data_toy_root, tmp_path):
    missing = tmp_path / "nope.ckpt"
    result = _train("stage=align", *_tiny(data_toy_root, tmp_path / "out"), f"init_from={missing}",
                    f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode == 2
    assert str(missing) in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_chain_job_runs_all_stages_and_skips_them_when_rerun(data_toy_root, tmp_path):
    job = tmp_path / "job"
    args = ["stage=chain", *_tiny(data_toy_root, tmp_path / "out"), f"hydra.run.dir={job}"]
    first = _train(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    stages = [json.loads((job / d / "manifest.json").read_text())["stage"]
              for d in ("0_source", "1_align", "2_teach", "3_propagate")]
    assert stages == ["source", "align", "teach", "propagate"]
    align = json.loads((job / "1_align" / "manifest.json").read_text())
    assert align["init_from"] == str((job / "0_source" / "checkpoints" / "final.ckpt").resolve())
    before = (job / "3_propagate" / "checkpoints" / "final.ckpt").stat().st_mtime_ns
    second = _train(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.findall(r"chain: (\w+) already finished in .*, skipping", (job / "train.log").read_text()) == [
        "source", "align", "teach", "propagate"]
    assert (job / "3_propagate" / "checkpoints" / "final.ckpt").stat().st_mtime_ns == before


def test_chain_stage_starts_from_its_latest_registry_predecessor_in_the_chain(tmp_path):
    from atp.train import chain_init

    source, distill, align, teach = (tmp_path / f"{n}.ckpt" for n in ("source", "distill", "align", "teach"))
    # align's predecessors are source and distill: the latest finished one, not the previous list element
    assert chain_init("align", [("source", source), ("teach", teach)]) == str(source)
    assert chain_init("align", [("source", source), ("distill", distill)]) == str(distill)
    assert chain_init("teach", [("source", source), ("align", align), ("distill", distill)]) == str(align)
    # chain.stages=[source, adabn, align, …]: adabn and align both start from source
    adabn = tmp_path / "adabn.ckpt"
    assert chain_init("adabn", [("source", source)]) == str(source)
    assert chain_init("align", [("source", source), ("adabn", adabn)]) == str(source)
    # nothing of the chain to start from: the stage's own default (source: none; align: auto)
    assert chain_init("source", []) == "default"
    assert chain_init("teach", [("source", source)]) == "default"


def test_chain_checks_every_stage_option_before_training(data_toy_root, tmp_path):
    job = tmp_path / "job"
    result = _train("stage=chain", *_tiny(data_toy_root, tmp_path / "out"), f"hydra.run.dir={job}",
                    "+per_stage.teach.stage.module.pos_treshold=0.9")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "stage.module.pos_treshold is not an option of stage=teach" in result.stderr
    assert "Did you mean stage.module.pos_threshold?" in result.stderr
    assert not (job / "0_source" / "manifest.json").exists()  # nothing trained


def test_chain_with_an_unknown_stage_names_the_valid_ones(data_toy_root, tmp_path):
    result = _train("stage=chain", *_tiny(data_toy_root, tmp_path / "out"), f"hydra.run.dir={tmp_path / 'job'}",
                    "chain.stages=[source,allign]")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "stage=allign is not a training stage" in result.stderr and "propagate" in result.stderr


@pytest.mark.slow
def test_a_sweep_of_chain_jobs_gets_one_results_table(data_toy_root, tmp_path):
    # each stage=chain job summarises only its own job dir; the Hydra callback summarises the whole sweep
    sweep = tmp_path / "sweep"
    result = _train("-m", "stage=chain", "chain.stages=[source]", "seed=1,2", *_tiny(data_toy_root, tmp_path / "out"),
                    f"hydra.sweep.dir={sweep}", "trainer.max_steps=1", "trainer.val_check_interval=1")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((sweep / "results.json").read_text())["runs"]
    assert sorted((r["seed"], r["stage"]) for r in rows) == [(1, "source"), (2, "source")]
    assert (sweep / "results.md").is_file()


def test_a_user_error_inside_a_submitit_job_raises_instead_of_exiting(tmp_path):
    # SystemExit would leave submitit without a result file; the exception becomes the job's result
    plain = _train("stage=chain", "chain.stages=[nope]", f"paths.output_dir={tmp_path}")
    in_job = _train("stage=chain", "chain.stages=[nope]", f"paths.output_dir={tmp_path}", env={"SUBMITIT_FOLDER": str(tmp_path)})
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert "error:" in in_job.stderr and "UserError" in in_job.stderr and in_job.returncode == 1
