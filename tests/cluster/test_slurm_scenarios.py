"""The SLURM path on a real scheduler: the one-node SLURM of ``scripts/slurm_local.sh`` (``make test-cluster``).

Every scenario runs the user's own command, ``python -m atp.train -m hydra/launcher=submitit_slurm ...``:
hydra-submitit-launcher pickles the job, ``sbatch`` queues it, submitit's ``srun`` step runs it, and the
submitting command waits for its result. SLURM's own view of a job comes from ``scontrol`` (there is no
accounting database, so ``sacct`` and submitit's state polling do not work; submitit waits for the result
file instead).
"""

from __future__ import annotations

import json
import math
import pickle
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.cluster.slurm_helpers import (
    SLURM_LAUNCHER,
    finish,
    finished_job,
    run,
    scontrol_job,
    start,
    submitit_jobs,
    train_args,
    wait_for,
    weights,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CHAIN = ("source", "align", "teach", "propagate")
BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _differing(first: dict, second: dict) -> list[str]:
    assert first.keys() == second.keys()
    return [k for k in first if not torch.equal(first[k], second[k])]


# ---------------------------------------------------------------------- time limit mid-stage
# SLURM checks time limits every 30 s and sends the --signal=USR2@<signal_delay_s> when the warning time
# falls before its next check: the signal comes 30-60 s into a job with a 2-minute limit and a 60 s delay.
TIMEOUT_MIN, SIGNAL_DELAY_S = 2, 60
SOURCE_TRAIN_S = 45  # the source stage trains at least this long, so SLURM's signal lands inside it


def _source_steps(data_dir: Path, tmp_path: Path) -> int:
    """Source steps that take about SOURCE_TRAIN_S seconds on this machine now (a 20-step probe)."""
    probe = tmp_path / "probe"
    assert run(["stage=source", *train_args(data_dir, tmp_path / "out", "trainer.max_steps=20",
                                            "trainer.val_check_interval=20", f"hydra.run.dir={probe}")],
               tmp_path / "probe.log", timeout=300) == 0, (tmp_path / "probe.log").read_text()[-3000:]
    per_step = _manifest(probe)["train_seconds"] / 20
    return max(60, min(1000, math.ceil(SOURCE_TRAIN_S / per_step / 10) * 10))


def _saved_on_signal(job_dir: Path) -> list[tuple[str, int]]:
    """(stage dir name, step) of every "SIGUSR2: saved step <n> to <stage dir>/checkpoints/last.ckpt" line of
    the chain job's log (one train.log per job dir, appended to by every requeued run)."""
    found = re.findall(r"SIGUSR2: saved step (\d+) to (\S+)/checkpoints/last\.ckpt", (job_dir / "train.log").read_text())
    return [(Path(stage_dir).name, int(step)) for step, stage_dir in found]


@pytest.fixture(scope="module")
def time_limit_run(data_toy_root, tmp_path_factory) -> dict:
    """stage=chain on SLURM with a 2-minute limit, and the same chain uninterrupted outside SLURM."""
    tmp = tmp_path_factory.mktemp("time_limit")
    steps = _source_steps(data_toy_root, tmp)
    schedule = [f"++per_stage.source.trainer.max_steps={steps}", f"++per_stage.source.trainer.val_check_interval={steps}"]
    for stage in CHAIN[1:]:
        schedule += [f"++per_stage.{stage}.trainer.max_steps=4", f"++per_stage.{stage}.trainer.val_check_interval=4"]
    chain = ["stage=chain", *train_args(data_toy_root, tmp / "out", *schedule, "checkpoint_every=5")]

    sweep = tmp / "sweep"
    started = time.time()
    slurm = start(["-m", *SLURM_LAUNCHER, f"hydra.launcher.timeout_min={TIMEOUT_MIN}",
                   f"hydra.launcher.signal_delay_s={SIGNAL_DELAY_S}", "hydra.launcher.max_num_timeout=6",
                   f"hydra.sweep.dir={sweep}", *chain], tmp / "slurm.log")
    returncode = finish(slurm, tmp / "slurm.log", timeout=900)
    slurm_seconds = time.time() - started
    assert returncode == 0, (tmp / "slurm.log").read_text()[-4000:]
    reference = tmp / "reference"
    assert run([*chain, f"hydra.run.dir={reference}"], tmp / "reference.log", timeout=900) == 0, \
        (tmp / "reference.log").read_text()[-4000:]
    (job_id,) = submitit_jobs(sweep)
    return {"job_dir": sweep / "0_chain", "reference": reference, "job_id": job_id, "steps": steps,
            "submitit": sweep / ".submitit" / job_id, "seconds": slurm_seconds}


def test_time_limit_requeues_mid_stage_and_the_chain_ends_bit_for_bit(time_limit_run):
    job = finished_job(time_limit_run["job_id"])
    # SLURM itself signalled the job before its time limit and submitit requeued it (scontrol requeue)
    assert int(job["Restarts"]) >= 1, job
    # Finished: COMPLETED, or once seen here, FAILED with 128 + SIGUSR2 although the job's result says success:
    # a signal that arrives while Python shuts down (its handlers already reset to the default) ends the
    # process after submitit wrote the result. The weights below are what counts.
    with (time_limit_run["submitit"] / f"{time_limit_run['job_id']}_0_result.pkl").open("rb") as handle:
        assert pickle.load(handle)[0] == "success"
    assert job["JobState"] == "COMPLETED" or (job["JobState"], job["ExitCode"]) == ("FAILED", "140:0"), job
    assert job["TimeLimit"] == f"00:0{TIMEOUT_MIN}:00", job
    log = "".join(p.read_text() for p in sorted(time_limit_run["submitit"].glob("*_log.err")))
    assert "Caught signal SIGUSR2" in log and "this job is timed-out" in log, log[-3000:]
    # ... inside a stage: the stage saved the step it was at before submitit's handler requeued the job
    saved = _saved_on_signal(time_limit_run["job_dir"])
    assert saved, "SLURM's signal never came during a stage's training"
    print(f"\nSLURM job {time_limit_run['job_id']}: Restarts={job['Restarts']}, source steps "
          f"{time_limit_run['steps']}, {time_limit_run['seconds']:.0f} s; {saved}")

    for index, stage in enumerate(CHAIN):
        name = f"{index}_{stage}"
        manifest = _manifest(time_limit_run["job_dir"] / name)
        assert manifest["status"] == "complete", (stage, manifest)
        ours = weights(time_limit_run["job_dir"] / name / "checkpoints" / "final.ckpt")
        reference = weights(time_limit_run["reference"] / name / "checkpoints" / "final.ckpt")
        assert not _differing(ours, reference), stage
        assert manifest["metrics"] == _manifest(time_limit_run["reference"] / name)["metrics"], stage


def test_time_limit_the_manifest_records_the_interruption(time_limit_run):
    interrupted = [_manifest(time_limit_run["job_dir"] / name) for name, _ in _saved_on_signal(time_limit_run["job_dir"])]
    assert interrupted
    for manifest in interrupted:  # the finished manifest still says the stage was stopped, where, and resumed
        assert manifest["status"] == "complete"
        assert manifest.get("interruptions"), manifest


# ---------------------------------------------------------------------- DDP under srun
def test_ddp_under_srun_two_tasks(data_toy_root, tmp_path):
    """Two SLURM tasks (srun) are the two DDP ranks (gloo): the teacher, student and prototype statistics
    agree on both ranks, and there is one manifest and one set of checkpoints per stage.

    ``tests.helpers.ddp_probe`` runs as ``__main__``, so submitit pickles its task function by value: the per-rank
    dumps (a callback) travel with it, its audit hook (``writes-rank<r>.txt``) does not."""
    sweep, probe = tmp_path / "sweep", tmp_path / "probe"
    probe.mkdir()
    returncode = run(
        ["-m", *SLURM_LAUNCHER, "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={sweep}", "stage=chain",
         *train_args(data_toy_root, tmp_path / "out", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     "data.batch_size=1", "trainer.max_steps=2", "trainer.val_check_interval=2",
                     "++per_stage.propagate.stage.module.scl.start_step=1")],
        tmp_path / "slurm.log", module="tests.helpers.ddp_probe", extra_env={"ATP_PROBE_DIR": str(probe)})
    assert returncode == 0, (tmp_path / "slurm.log").read_text()[-4000:]
    (job_id,) = submitit_jobs(sweep)
    job = finished_job(job_id)
    assert job["NumTasks"] == "2" and job["JobState"] == "COMPLETED", job

    job_dir = sweep / "0_chain"
    for index, stage in enumerate(CHAIN):
        run_dir = job_dir / f"{index}_{stage}"
        assert _manifest(run_dir)["status"] == "complete" and _manifest(run_dir)["steps"] == 2, stage
        assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.ckpt", "final.ckpt"}, stage
        ranks = [torch.load(probe / f"{stage}-rank{r}.pt", weights_only=False) for r in range(2)]
        assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)], stage
        for part in ("student", "teacher", "prototypes"):
            if part in ranks[0]:
                differing = _differing(ranks[0][part], ranks[1][part])
                assert all(k.endswith(BN_STATISTICS) for k in differing), (stage, part, differing[:5])
        if stage == "propagate":
            assert ranks[0]["prototypes"]["count"].sum() > 0
        assert ranks[0]["val"] and ranks[0]["val"] == ranks[1]["val"], stage
    # one manifest per stage and one set of checkpoints (above): rank 1 (SLURM_PROCID=1) wrote none of its own
    assert len(list(job_dir.rglob("manifest.json"))) == len(CHAIN)
    assert len(list(job_dir.rglob("*.ckpt"))) == 2 * len(CHAIN)


# ---------------------------------------------------------------------- a sweep as jobs
@pytest.fixture(scope="module")
def sweep_run(data_toy_root, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    sweep = tmp / "sweep"
    returncode = run(["-m", *SLURM_LAUNCHER, f"hydra.sweep.dir={sweep}", "seed=1,2", "stage=chain",
                      "chain.stages=[source,align]",
                      *train_args(data_toy_root, tmp / "out", "trainer.max_steps=3", "trainer.val_check_interval=3")],
                     tmp / "slurm.log")
    assert returncode == 0, (tmp / "slurm.log").read_text()[-4000:]
    return sweep


def test_sweep_runs_one_slurm_job_per_seed_with_the_chain_hand_off(sweep_run):
    jobs = submitit_jobs(sweep_run)
    assert len(jobs) == 2 and len({j.split("_")[0] for j in jobs}) == 1, jobs  # one job array, two tasks
    assert all(finished_job(j)["JobState"] == "COMPLETED" for j in jobs)
    for num, seed in enumerate((1, 2)):
        job_dir = sweep_run / f"{num}_chain"
        source, align = _manifest(job_dir / "0_source"), _manifest(job_dir / "1_align")
        assert source["seed"] == align["seed"] == seed and source["status"] == align["status"] == "complete"
        # align starts from this job's own source weights, not the other seed's
        assert Path(align["init_from"]).resolve() == (job_dir / "0_source" / source["final_ckpt"]).resolve()
    a, b = (weights(sweep_run / f"{n}_chain" / "0_source" / "checkpoints" / "final.ckpt") for n in (0, 1))
    assert _differing(a, b)  # the seeds differ


def test_sweep_results_aggregate_both_jobs(sweep_run):
    rows = json.loads((sweep_run / "results.json").read_text())["runs"]
    assert sorted((r["seed"], r["stage"]) for r in rows) == [(1, "align"), (1, "source"), (2, "align"), (2, "source")]
    assert all(r["status"] == "complete" for r in rows)


# ---------------------------------------------------------------------- cancel
def test_scancel_leaves_a_resumable_last_ckpt(data_toy_root, tmp_path):
    sweep = tmp_path / "sweep"
    stage_args = train_args(data_toy_root, tmp_path / "out", "trainer.max_steps=5000",
                            "trainer.val_check_interval=5000", "checkpoint_every=2")
    log = tmp_path / "slurm.log"
    submit = start(["-m", *SLURM_LAUNCHER, f"hydra.sweep.dir={sweep}", "stage=source", *stage_args], log)
    run_dir = sweep / "0_source"
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "last.ckpt").is_file(), 600, "checkpoint", submit, log)
        (job_id,) = submitit_jobs(sweep)
        subprocess.run(["scancel", job_id], check=True, timeout=60)
        wait_for(lambda: _manifest(run_dir)["status"] != "running", 120, "manifest update")
        wait_for(lambda: scontrol_job(job_id)["JobState"] == "CANCELLED", 120, "CANCELLED state")
    finally:
        if submit.poll() is None:  # it waits for a result the cancelled job may never write
            submit.kill()
            submit.wait()
    manifest = _manifest(run_dir)
    step = manifest.get("stopped_at_step")
    assert manifest["status"] == "interrupted" and step and step < 5000, manifest
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step
    assert f"SIGTERM: saved step {step}" in (run_dir / "train.log").read_text()
    assert not (run_dir / "checkpoints" / "final.ckpt").exists()

    # resumable: the same stage continues from that step (a shorter schedule, so the test ends soon)
    resumed = tmp_path / "resume.log"
    assert run(["stage=source", *stage_args, "resume=true", f"trainer.max_steps={step + 2}",
                f"hydra.run.dir={run_dir}"], resumed, timeout=300) == 0, resumed.read_text()[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.read_text()
    assert _manifest(run_dir)["status"] == "complete" and _manifest(run_dir)["steps"] == step + 2
