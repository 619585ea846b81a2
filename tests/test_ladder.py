"""``python -m atp.ladder``: tiny ladders end to end (resumable, failures reported) and the table arithmetic."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from atp.ladder.cli import main as ladder_main
from atp.ladder.tables import summarise_family
from tests.stage_helpers import CONF_DIR, TINY

SEEDS = (76, 1)
STAGES = ("source", "align", "teach")  # teach: a stage whose EMA teacher is reported (its predecessor is align)
STEP_DIRS = {"source": "0_source", "align": "1_align", "teach": "2_teach", "oracle": "oracle"}


def _tiny(data_dir: Path, out: Path) -> list[str]:
    return [*(o for o in TINY if not o.startswith("experiment=")), f"paths.data_dir={data_dir}",
            f"paths.output_dir={out}", "trainer.max_steps=2", "trainer.val_check_interval=2"]


def _metrics(out: Path, seed: int, step: str, folder: str = "eval") -> dict:
    return json.loads((out / "toy" / f"seed{seed}" / STEP_DIRS[step] / folder / "metrics.json").read_text())


def _miou(out: Path, seed: int, step: str, folder: str = "eval") -> float:
    return _metrics(out, seed, step, folder)["mIoU"]["all19"]


@pytest.fixture(scope="module")
def ladder_run(data_toy_root, tmp_path_factory):
    """One finished 1-family × 2-seed ladder (source → align → teach + oracle) and its console output."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("ladder") / "out"
    args = ["--families", "toy", "--seeds", ",".join(map(str, SEEDS)), "--stages", ",".join(STAGES),
            "--out", str(out), *_tiny(data_toy_root, out.parent / "outputs")]
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        code = ladder_main(args)
    return out, args, code, console.getvalue()


@pytest.mark.slow
def test_ladder_writes_mean_and_std_over_seeds_of_every_stage(ladder_run):
    out, _, code, console = ladder_run
    assert code == 0, console
    assert [line.split()[5:7] for line in console.splitlines() if " done " in line] == [
        ["source", "done"], ["align", "done"], ["teach", "done"], ["oracle", "done"]] * 2
    table = json.loads((out / "ladder.json").read_text())["tables"]["toy"]
    rows = {row["stage"]: row for row in table["rows"]}
    assert list(rows) == ["source", "align", "teach", "oracle"]
    markdown = (out / "ladder.md").read_text()
    for stage in rows:
        a, b = (_miou(out, seed, stage) for seed in SEEDS)
        mean, std = (a + b) / 2, abs(a - b) / math.sqrt(2)  # the sample std of two values
        assert rows[stage]["student"]["mean"] == pytest.approx(mean)
        assert rows[stage]["student"]["std"] == pytest.approx(std)
        assert f"| {stage} | {mean:.2f} ± {std:.2f} (2) |" in markdown
    # the teacher only where it trains the student
    assert rows["source"]["teacher"] is None and rows["oracle"]["teacher"] is None
    teachers = [_metrics(out, seed, "teach", "eval_teacher") for seed in SEEDS]
    assert all(t["weights"] == "teacher" for t in teachers)
    assert rows["teach"]["teacher"]["mean"] == pytest.approx(sum(t["mIoU"]["all19"] for t in teachers) / 2)
    # share of the gap closed, per seed where the oracle beats the source, then the mean
    shares = []
    for seed in SEEDS:
        source, teach, oracle = (_miou(out, seed, s) for s in ("source", "teach", "oracle"))
        if oracle > source:
            shares.append(100 * (teach - source) / (oracle - source))
    gap = rows["teach"]["gap_closed"]
    assert (gap is None) if not shares else gap["mean"] == pytest.approx(sum(shares) / len(shares))


@pytest.mark.slow
def test_ladder_oracle_trains_on_target_labels_and_never_feeds_a_stage(ladder_run):
    out, _, code, _ = ladder_run
    assert code == 0
    seed_dir = out / "toy" / "seed76"
    oracle = json.loads((seed_dir / "oracle" / "manifest.json").read_text())
    assert (oracle["stage"], oracle["dataset"], oracle["status"]) == ("source", "toy-oracle", "complete")
    dataset = OmegaConf.load(seed_dir / "oracle" / "config.yaml").dataset
    source = OmegaConf.to_container(OmegaConf.create({"paths": {"data_dir": "D"}, "dataset": dataset}).dataset.source,
                                    resolve=True)
    assert source["_target_"].endswith("CityscapesDataset") and source["split"] == "train"
    assert source["root"] == "D/toy/cityscapes"
    align = json.loads((seed_dir / "1_align" / "manifest.json").read_text())
    assert align["init_from"] == str((seed_dir / "0_source" / "checkpoints" / "final.ckpt").resolve())


@pytest.mark.slow
def test_ladder_second_invocation_reruns_nothing(ladder_run, capsys):
    out, args, code, _ = ladder_run
    assert code == 0
    watched = [p for p in out.rglob("*") if p.suffix in (".ckpt", ".log") or p.name == "metrics.json"]
    before = {p: p.stat().st_mtime_ns for p in watched}
    assert ladder_main(args) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\d\d:\d\d:\d\d \[", line)]
    assert len(lines) == len(SEEDS) * (len(STAGES) + 1)
    assert all("skipped" in line for line in lines), lines
    assert {p: p.stat().st_mtime_ns for p in watched} == before


@pytest.mark.slow
def test_failing_family_is_reported_with_its_log_and_the_others_finish(ladder_run, tmp_path, monkeypatch, capsys):
    out, args, _, _ = ladder_run
    conf = Path(shutil.copytree(CONF_DIR, tmp_path / "conf"))
    (conf / "dataset" / "toy_broken.yaml").write_text(
        "defaults:\n  - toy\n  - _self_\nname: toy_broken\nsource:\n  root: ${paths.data_dir}/no_such_folder\n")
    monkeypatch.setenv("ATP_CONF_DIR", str(conf))  # the ladder and its jobs find the families here
    overrides = args[args.index("--out") + 2:]
    code = ladder_main(["--families", "toy_broken,toy", "--seeds", "76", "--stages", ",".join(STAGES),
                        "--no-oracle", "--out", str(out), *overrides])
    console = capsys.readouterr().out
    assert code == 1
    log = out / "toy_broken" / "seed76" / "train.log"
    assert f"log: {log}" in console and "no_such_folder" in log.read_text()
    assert "no_such_folder" in console  # the log's tail is shown
    assert any("toy_broken" in line and "source" in line and "failed" in line for line in console.splitlines())
    assert any("toy_broken" in line and "teach" in line and "not run" in line for line in console.splitlines())
    markdown = (out / "ladder.md").read_text()
    assert "## toy (seeds 76)" in markdown and "| teach |" in markdown
    assert "## Failed" in markdown and str(log) in markdown


def test_unknown_family_and_reserved_override_are_one_clear_line(capsys):
    assert ladder_main(["--families", "toy_nope"]) == 2
    err = capsys.readouterr().err
    assert "toy_nope" in err and "toy" in err and "--families all" in err
    assert ladder_main(["--families", "toy", "seed=3"]) == 2
    assert "--seeds" in capsys.readouterr().err


def _record(seed, stage, miou, per_class=None, teacher=None):
    student = {"mIoU": {"all19": miou}, "per_class_iou": per_class or {}}
    return {"family": "f", "seed": seed, "stage": stage, "student": student,
            "teacher": None if teacher is None else {"mIoU": {"all19": teacher}}}


def test_tables_arithmetic_against_hand_computed_values():
    records = [
        _record(1, "source", 30.0), _record(1, "teach", 34.0, {"road": 50.0, "sky": 10.0, "pole": None}, 35.0),
        _record(1, "propagate", 36.0, {"road": 55.0, "sky": 8.0, "pole": 3.0}, 37.0), _record(1, "oracle", 40.0),
        _record(2, "source", 32.0), _record(2, "teach", 33.0, {"road": 60.0, "sky": 20.0, "pole": 1.0}, 34.0),
        _record(2, "propagate", 35.0, {"road": 61.0, "sky": 26.0, "pole": 2.0}, 35.5), _record(2, "oracle", 42.0),
        _record(3, "source", 20.0), _record(3, "oracle", 19.0),  # oracle below source: no share for seed 3
    ]
    table = summarise_family(records, ["source", "teach", "propagate"])
    assert table["seeds"] == [1, 2, 3]
    rows = {row["stage"]: row for row in table["rows"]}
    assert rows["source"]["student"]["mean"] == pytest.approx(82 / 3)
    assert rows["source"]["student"]["std"] == pytest.approx(math.sqrt(((30 - 82 / 3) ** 2 + (32 - 82 / 3) ** 2
                                                                        + (20 - 82 / 3) ** 2) / 2))
    assert rows["teach"]["student"] == {"mean": 33.5, "std": pytest.approx(math.sqrt(0.5)), "n": 2,
                                        "per_seed": {"1": 34.0, "2": 33.0}}
    assert rows["teach"]["teacher"]["mean"] == pytest.approx(34.5)
    assert rows["source"]["teacher"] is None
    # seed 1: (34-30)/(40-30) = 40 %; seed 2: (33-32)/(42-32) = 10 %
    assert rows["teach"]["gap_closed"]["per_seed"] == {"1": pytest.approx(40.0), "2": pytest.approx(10.0)}
    assert rows["teach"]["gap_closed"]["mean"] == pytest.approx(25.0)
    assert rows["propagate"]["gap_closed"]["mean"] == pytest.approx((60.0 + 30.0) / 2)
    assert rows["oracle"]["gap_closed"]["mean"] == pytest.approx(100.0)
    assert rows["oracle"]["student"]["n"] == 3
    # per class: road +5/+1 → 3; sky -2/+6 → 2; pole only seed 2 (None in seed 1's teach) → 1
    change = table["per_class_change"]
    assert [(c["class"], c["change"], c["n"]) for c in change["classes"]] == [
        ("road", pytest.approx(3.0), 2), ("sky", pytest.approx(2.0), 2), ("pole", pytest.approx(1.0), 1)]


def test_interrupted_ladder_stops_its_running_job(tmp_path, monkeypatch):
    import sys
    import time
    from types import SimpleNamespace

    from atp.ladder import jobs
    from atp.ladder.plan import Job, Step

    marker = tmp_path / "terminated"
    ready = tmp_path / "ready"
    child = (f"import signal, sys, time, pathlib\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(marker)!r}).write_text('x'), sys.exit(143)))\n"
             f"pathlib.Path({str(ready)!r}).write_text('x')\n"
             f"time.sleep(60)\n")
    step = Step("toy", 76, "source", tmp_path / "job" / "0_source")
    job = Job("toy", 76, "chain", tmp_path / "job", (step,), (sys.executable, "-c", child))
    def interrupt_once_started(seconds):
        if ready.exists():
            raise KeyboardInterrupt  # as Ctrl-C, or SIGTERM through the ladder's handler, would
        time.sleep(0.05)

    # only the ladder's poll loop sleeps this way (subprocess.wait keeps the real time.sleep)
    monkeypatch.setattr(jobs, "time", SimpleNamespace(time=time.time, strftime=time.strftime,
                                                       sleep=interrupt_once_started))
    with pytest.raises(KeyboardInterrupt):
        jobs.run_job(job, jobs.Progress([step]), poll_s=0.05)
    assert marker.read_text() == "x"  # the job got SIGTERM and was waited for, not orphaned
