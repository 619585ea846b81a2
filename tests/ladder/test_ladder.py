"""``python -m atp.ladder``: tiny ladders end to end (resumable, failures reported) and the table arithmetic."""

import json
import math
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from atp.ladder.cli import main as ladder_main
from atp.ladder.tables import summarise_family
from tests.helpers.stages import CONF_DIR, TINY

SEEDS = (76, 1)
FAMILIES = ("toy", "toy_fog")
# adabn and align: chain stages without a predecessor in the chain (they start from the shared source);
# teach: a stage whose EMA teacher is reported (its predecessor is align)
STAGES = ("source", "adabn", "align", "teach")
STEP_DIRS = {"adabn": "0_adabn", "align": "1_align", "teach": "2_teach", "oracle": "oracle"}


def _tiny(data_dir: Path, out: Path) -> list[str]:
    return [*(o for o in TINY if not o.startswith("experiment=")), f"paths.data_dir={data_dir}",
            f"paths.output_dir={out}", "trainer.max_steps=2", "trainer.val_check_interval=2"]


def _step_dir(out: Path, seed: int, step: str, family: str = "toy") -> Path:
    return out / "_source" / f"seed{seed}" if step == "source" else out / family / f"seed{seed}" / STEP_DIRS[step]


def _metrics(out: Path, seed: int, step: str, folder: str = "eval", family: str = "toy") -> dict:
    if step == "source" and folder == "eval":
        folder = f"eval_{family}"  # the shared source model, evaluated on this family's target val
    return json.loads((_step_dir(out, seed, step, family) / folder / "metrics.json").read_text())


def _miou(out: Path, seed: int, step: str, folder: str = "eval", family: str = "toy") -> float:
    return _metrics(out, seed, step, folder, family)["mIoU"]["all19"]


def _run(args: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        code = ladder_main(args)
    return code, console.getvalue()


@pytest.fixture(scope="module")
def ladder_run(data_toy_root, module_tmp):
    """One finished 2-family × 2-seed ladder (shared source → adabn → align → teach + the oracle of the first
    seed), two jobs at once, and its console output."""
    out = module_tmp / "out"
    args = ["--families", ",".join(FAMILIES), "--seeds", ",".join(map(str, SEEDS)), "--stages", ",".join(STAGES),
            "--methods", "none", "--jobs", "2", "--out", str(out), *_tiny(data_toy_root, out.parent / "outputs")]
    code, console = _run(args)
    return out, args, code, console


def _events(console: str, status: str) -> list[tuple[str, str, str]]:
    """(family, seed, step) of the progress lines with ``status``."""
    found = (re.match(r"\d\d:\d\d:\d\d \[ *\d+/\d+\] (\S+) +seed (\S+) +(\S+) +(\S+)", line)
             for line in console.splitlines())
    return [match.group(1, 2, 3) for match in found if match and match.group(4) == status]


@pytest.mark.slow
def test_ladder_writes_mean_and_std_over_seeds_of_every_stage(ladder_run):
    out, _, code, console = ladder_run
    assert code == 0, console
    # source once per seed, every family's chain and the first seed's oracles, in whatever order the two slots took
    assert sorted(_events(console, "done")) == sorted(
        [("shared", str(s), "source") for s in SEEDS]
        + [(f, str(s), stage) for f in FAMILIES for s in SEEDS for stage in STAGES[1:]]
        + [(f, str(SEEDS[0]), "oracle") for f in FAMILIES])
    ladder = json.loads((out / "ladder.json").read_text())
    assert (ladder["shared_source"], ladder["jobs"], ladder["oracle_seeds"]) == (True, 2, [SEEDS[0]])
    markdown = (out / "ladder.md").read_text()
    for family in FAMILIES:
        table = ladder["tables"][family]
        rows = {row["stage"]: row for row in table["rows"]}
        assert table["seeds"] == list(SEEDS) and list(rows) == [*STAGES, "oracle"]
        for stage in STAGES:
            a, b = (_miou(out, seed, stage, family=family) for seed in SEEDS)
            mean, std = (a + b) / 2, abs(a - b) / math.sqrt(2)  # the sample std of two values
            assert rows[stage]["student"]["mean"] == pytest.approx(mean)
            assert rows[stage]["student"]["std"] == pytest.approx(std)
            assert f"| {stage} | {mean:.2f} ± {std:.2f} (2) |" in markdown
        oracle = _miou(out, SEEDS[0], "oracle", family=family)
        assert rows["oracle"]["student"]["per_seed"] == {str(SEEDS[0]): pytest.approx(oracle)}
        # the teacher only where it trains the student
        assert rows["source"]["teacher"] is None and rows["oracle"]["teacher"] is None
        teachers = [_metrics(out, seed, "teach", "eval_teacher", family) for seed in SEEDS]
        assert all(t["weights"] == "teacher" for t in teachers)
        assert rows["teach"]["teacher"]["mean"] == pytest.approx(sum(t["mIoU"]["all19"] for t in teachers) / 2)
        # gap closed: every seed against the one oracle (seed 76's), where it beats that seed's source
        shares = {}
        for seed in SEEDS:
            source, teach = (_miou(out, seed, s, family=family) for s in ("source", "teach"))
            if oracle > source:
                shares[str(seed)] = pytest.approx(100 * (teach - source) / (oracle - source))
        gap = rows["teach"]["gap_closed"]
        assert (gap is None) if not shares else gap["per_seed"] == shares
    assert "* oracle: seed(s) 76;" in markdown and "one source model per seed, shared by every family" in markdown


@pytest.mark.slow
def test_ladder_trains_the_source_once_per_seed_and_every_chain_starts_from_it(ladder_run):
    out, _, code, _ = ladder_run
    assert code == 0
    for seed in SEEDS:
        shared = out / "_source" / f"seed{seed}"
        source = json.loads((shared / "manifest.json").read_text())
        assert (source["stage"], source["status"]) == ("source", "complete")
        checkpoint = str((shared / "checkpoints" / "final.ckpt").resolve())
        for family in FAMILIES:
            seed_dir = out / family / f"seed{seed}"
            assert not list(seed_dir.glob("*_source")) and not (seed_dir / "oracle" / "0_source").exists()
            adabn, align, teach = (json.loads((seed_dir / STEP_DIRS[s] / "manifest.json").read_text())
                                   for s in ("adabn", "align", "teach"))
            # a chain [adabn, align, teach] given init_from: both stages without a predecessor in it start there
            assert adabn["init_from"] == align["init_from"] == checkpoint
            assert teach["init_from"] == str((seed_dir / "1_align" / "checkpoints" / "final.ckpt").resolve())
        # one model, evaluated on each family's own target val
        evals = [_metrics(out, seed, "source", family=f) for f in FAMILIES]
        assert [e["ckpt"] for e in evals] == [checkpoint] * len(FAMILIES)
        assert evals[0]["mIoU"] != evals[1]["mIoU"]  # toy (mixed) and fog targets differ


@pytest.mark.slow
def test_shared_source_changes_no_number_of_the_chain(ladder_run, data_toy_root):
    out, args, code, _ = ladder_run
    assert code == 0
    alone = out.parent / "alone"
    overrides = args[args.index("--out") + 2:]
    code, console = _run(["--families", "toy_fog", "--seeds", str(SEEDS[0]), "--stages", ",".join(STAGES),
                          "--methods", "none", "--no-oracle", "--no-share-source", "--jobs", "2", "--out", str(alone),
                          *overrides])
    assert code == 0, console
    seed_dir = alone / "toy_fog" / f"seed{SEEDS[0]}"
    per_family = {s: json.loads((seed_dir / f"{i}_{s}" / "eval" / "metrics.json").read_text())
                  for i, s in enumerate(STAGES)}
    assert json.loads((alone / "ladder.json").read_text())["shared_source"] is False
    for stage in STAGES:
        assert per_family[stage]["mIoU"] == _metrics(out, SEEDS[0], stage, family="toy_fog")["mIoU"], stage


@pytest.mark.slow
def test_ladder_oracle_trains_on_target_labels_and_never_feeds_a_stage(ladder_run):
    out, _, code, _ = ladder_run
    assert code == 0
    seed_dir = out / "toy" / "seed76"
    oracle = json.loads((seed_dir / "oracle" / "manifest.json").read_text())
    assert (oracle["stage"], oracle["dataset"], oracle["status"]) == ("source", "toy-oracle", "complete")
    assert not (out / "toy" / "seed1" / "oracle").exists()  # --oracle-seeds: the first seed only
    dataset = OmegaConf.load(seed_dir / "oracle" / "config.yaml").dataset
    source = OmegaConf.to_container(OmegaConf.create({"paths": {"data_dir": "D"}, "dataset": dataset}).dataset.source,
                                    resolve=True)
    assert source["_target_"].endswith("CityscapesDataset") and source["split"] == "train"
    assert source["root"] == "D/toy/cityscapes"


@pytest.mark.slow
def test_ladder_second_invocation_reruns_nothing(ladder_run, capsys):
    out, args, code, _ = ladder_run
    assert code == 0
    watched = [p for p in out.rglob("*") if p.suffix in (".ckpt", ".log") or p.name == "metrics.json"]
    before = {p: p.stat().st_mtime_ns for p in watched}
    assert ladder_main(args) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\d\d:\d\d:\d\d \[", line)]
    assert len(lines) == len(SEEDS) + len(FAMILIES) * len(SEEDS) * (len(STAGES) - 1) + len(FAMILIES)
    assert all("skipped" in line for line in lines), lines
    assert {p: p.stat().st_mtime_ns for p in watched} == before


@pytest.mark.slow
def test_failing_family_is_reported_with_its_log_and_the_others_finish(ladder_run, tmp_path, capsys):
    out, args, _, _ = ladder_run
    # a family of the user's own config folder, which the ladder and its jobs find through Hydra's search path
    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    (tmp_path / "conf" / "dataset" / "toy_broken.yaml").write_text(
        "defaults:\n  - toy\n  - _self_\nname: toy_broken\nsource:\n  root: ${paths.data_dir}/no_such_folder\n")
    overrides = [*args[args.index("--out") + 2:], f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]
    stages = STAGES[:2]  # source → adabn: enough to see a chain go on beside a failed one
    code = ladder_main(["--families", "toy_broken,toy", "--seeds", "76", "--stages", ",".join(stages),
                        "--methods", "none", "--no-oracle", "--out", str(out), *overrides])
    console = capsys.readouterr().out
    assert code == 1
    log = out / "toy_broken" / "seed76" / "train.log"
    assert f"log: {log}" in console and "no_such_folder" in log.read_text()
    assert "no_such_folder" in console  # the log's tail is shown
    assert any("toy_broken" in line and "source" in line and "failed" in line for line in console.splitlines())
    assert any("toy_broken" in line and "adabn" in line and "not run" in line for line in console.splitlines())
    assert "training the source model per family: dataset.source.root differs between toy_broken and toy" in console
    markdown = (out / "ladder.md").read_text()
    assert "## toy (seeds 76)" in markdown and "| adabn |" in markdown
    assert "## Failed" in markdown and str(log) in markdown
    # alone, the broken family shares its (failing) source job: its chain is not run, and says why
    code = ladder_main(["--families", "toy_broken", "--seeds", "76", "--stages", ",".join(stages),
                        "--methods", "none", "--no-oracle", "--out", str(tmp_path / "alone"), *overrides])
    console = capsys.readouterr().out
    assert code == 1
    assert _events(console, "failed") == [("shared", "76", "source")]
    assert _events(console, "not") == [("toy_broken", "76", stage) for stage in stages[1:]]  # "not run"
    assert "toy_broken seed 76 chain: not run, the job it starts from failed" in (
        tmp_path / "alone" / "ladder.md").read_text()


def test_unknown_family_and_reserved_override_are_one_clear_line(capsys):
    assert ladder_main(["--families", "toy_nope"]) == 2
    err = capsys.readouterr().err
    assert "toy_nope" in err and "toy" in err and "--families all" in err
    assert ladder_main(["--families", "toy", "seed=3"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert ladder_main(["--families", "toy", "init_from=/x.ckpt"]) == 2
    assert "init_from" in capsys.readouterr().err
    assert ladder_main(["--families", "toy", "--seeds", "76,1", "--oracle-seeds", "5"]) == 2
    assert "--oracle-seeds 5: not among --seeds 76,1" in capsys.readouterr().err
    assert ladder_main(["--families", "toy", "--jobs", "0"]) == 2
    assert "--jobs 0" in capsys.readouterr().err


def _dataset(family: str, *overrides: str) -> dict:
    from atp.ladder.cli import train_config

    return OmegaConf.to_container(train_config("toy_cpu", family, list(overrides)).dataset, resolve=True)


def test_toy_families_share_their_source_and_a_difference_in_it_is_named():
    from atp.ladder.plan import source_difference

    toy, fog, night = _dataset("toy"), _dataset("toy_fog"), _dataset("toy_night")
    assert toy["toy"]["out"] != fog["toy"]["out"] and toy["target"] != fog["target"]  # the target differs…
    assert source_difference({"toy": toy, "toy_fog": fog, "toy_night": night}) is None  # …the source does not
    # what the source stage reads: generator arguments, the source entry, the crops
    assert source_difference({"toy": toy, "toy_fog": _dataset("toy_fog", "dataset.toy.n_source=20")}) == (
        "dataset.toy.n_source differs between toy and toy_fog")
    assert source_difference({"toy": toy, "toy_fog": _dataset("toy_fog", "dataset.crop_size=[64,64]")}) == (
        "dataset.crop_size differs between toy and toy_fog")
    moved = _dataset("toy_fog", "dataset.source.root=/elsewhere/gta")  # not the family's own copy
    assert source_difference({"toy": toy, "toy_fog": moved}) == "dataset.source.root differs between toy and toy_fog"
    assert source_difference({"toy": toy, "real": {k: v for k, v in fog.items() if k != "toy"}}) == (
        "real is not a generated toy family (no dataset.toy)")


def test_shared_plan_runs_the_source_once_per_seed_before_the_chains(tmp_path):
    from atp.ladder.plan import plan_jobs

    stages = ["source", "adabn", "align"]
    jobs = plan_jobs(tmp_path, ["toy", "toy_fog"], [76, 1], stages, "toy_cpu", [], [76], share_source=True)
    assert [(j.kind, j.family, j.seed) for j in jobs] == [
        ("source", "shared", 76), ("source", "shared", 1),
        ("chain", "toy", 76), ("oracle", "toy", 76), ("chain", "toy", 1),
        ("chain", "toy_fog", 76), ("oracle", "toy_fog", 76), ("chain", "toy_fog", 1)]
    chain = jobs[2]
    assert chain.after == tmp_path / "_source" / "seed76" == jobs[0].run_dir
    assert "chain.stages=[adabn,align]" in chain.command
    assert f"init_from={tmp_path / '_source' / 'seed76' / 'checkpoints' / 'final.ckpt'}" in chain.command
    assert [(s.family, s.eval_name) for s in jobs[0].rungs] == [("toy", "eval_toy"), ("toy_fog", "eval_toy_fog")]
    unshared = plan_jobs(tmp_path, ["toy"], [76], stages, "toy_cpu", [], [], share_source=False)
    assert [(j.kind, j.after) for j in unshared] == [("chain", None)]
    assert "chain.stages=[source,adabn,align]" in unshared[0].command
    assert not any(arg.startswith("init_from=") for arg in unshared[0].command)


def test_jobs_get_their_share_of_the_threads(monkeypatch):
    from atp.ladder import jobs

    monkeypatch.setattr(jobs.os, "cpu_count", lambda: 8)
    assert [jobs.threads_per_job(n) for n in (1, 2, 3, 16)] == [8, 4, 2, 1]
    assert jobs.job_environment(1) is None  # one job at a time: the ladder's own environment, as before
    assert jobs.job_environment(2)["OMP_NUM_THREADS"] == "4"


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


def test_seeds_without_an_oracle_of_their_own_use_the_mean_of_their_familys():
    records = [_record(1, "source", 30.0), _record(1, "teach", 34.0), _record(1, "oracle", 40.0),
               _record(2, "source", 32.0), _record(2, "teach", 33.0), _record(3, "oracle", 44.0),
               _record(3, "source", 20.0), _record(3, "teach", 28.0)]
    rows = {row["stage"]: row for row in summarise_family(records, ["source", "teach"])["rows"]}
    # seed 1: its own oracle, (34-30)/(40-30); seed 2: the family mean (40+44)/2 = 42, (33-32)/(42-32);
    # seed 3: its own, (28-20)/(44-20)
    assert rows["teach"]["gap_closed"]["per_seed"] == {
        "1": pytest.approx(40.0), "2": pytest.approx(10.0), "3": pytest.approx(100 * 8 / 24)}
    assert rows["oracle"]["student"]["n"] == 2


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


def test_progress_eta_counts_only_the_steps_still_to_train(tmp_path, monkeypatch):
    import io
    import json
    from types import SimpleNamespace

    from atp.ladder import jobs
    from atp.ladder.plan import Step

    def step(name: str, finished: bool) -> Step:
        run_dir = tmp_path / name
        if finished:
            (run_dir / "checkpoints").mkdir(parents=True)
            (run_dir / "checkpoints" / "final.ckpt").write_bytes(b"x")
            (run_dir / "manifest.json").write_text(
                json.dumps({"status": "complete", "final_ckpt": "checkpoints/final.ckpt"}))
        return Step("toy", 76, name, run_dir)

    # a resumed ladder: two of five steps finished earlier; the first job's step ends before they are skipped
    steps = [step("a", False), step("b", True), step("c", True), step("d", False), step("e", False)]
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(jobs, "time", SimpleNamespace(time=lambda: clock.now, strftime=lambda _: "00:00:00"))
    out = io.StringIO()
    progress = jobs.Progress(steps, stream=out, started=clock.now)
    clock.now += 100.0
    progress.report(steps[0], "done", 100.0)
    # 100 s per trained step, two still to train (d, e); the finished b and c will only be skipped
    assert progress.eta() == pytest.approx(200.0)
    assert out.getvalue().rstrip().endswith("ETA 3m 20s")
    progress.report(steps[1], "skipped")
    progress.report(steps[2], "skipped")
    assert progress.eta() == pytest.approx(200.0)  # skipping takes no time and changes nothing
    progress.report(steps[3], "failed", 5.0)
    assert progress.eta() == pytest.approx(100.0)  # one left: e


def test_chain_stage_without_a_predecessor_in_the_chain_starts_from_the_jobs_init_from(tmp_path):
    from atp.train import chain_init

    source, adabn, align = (tmp_path / f"{name}.ckpt" for name in ("source", "adabn", "align"))
    # the ladder's chain [adabn, align, teach] after a shared source: adabn and align start from it…
    assert chain_init("adabn", [], str(source)) == str(source)
    assert chain_init("align", [("adabn", adabn)], str(source)) == str(source)  # adabn is not align's predecessor
    # …teach from the chain's align, whatever the job was given
    assert chain_init("teach", [("adabn", adabn), ("align", align)], str(source)) == str(align)
    # without init_from (the job's config says default): as before
    assert chain_init("adabn", [], "default") == chain_init("adabn", []) == "default"


def test_methods_and_ablations_start_from_the_rungs_they_name(tmp_path):
    from atp.ladder.ablations import get_ablations
    from atp.ladder.plan import plan_jobs

    stages = ["source", "adabn", "align", "teach", "propagate"]
    ablations = tuple(get_ablations(["no_align", "no_align_adabn", "teach_no_negatives"]))
    jobs = plan_jobs(tmp_path, ["toy", "toy_fog"], [76, 1], stages, "toy_cpu", ["x=1"], [], share_source=True,
                     methods=("tent",), ablations=ablations, ablation_runs=frozenset({("toy_fog", 1)}))
    kinds = [(j.kind, j.family, j.seed, j.run_dir.name) for j in jobs]
    # sources, then per family and seed the chain and the methods, and the ablations last
    assert kinds[:6] == [("source", "shared", 76, "seed76"), ("source", "shared", 1, "seed1"),
                         ("chain", "toy", 76, "seed76"), ("method", "toy", 76, "tent"),
                         ("chain", "toy", 1, "seed1"), ("method", "toy", 1, "tent")]
    assert kinds[-3:] == [("ablation", "toy_fog", 1, name) for name in ("no_align", "no_align_adabn",
                                                                         "teach_no_negatives")]
    seed_dir, source_dir = tmp_path / "toy_fog" / "seed1", tmp_path / "_source" / "seed1"
    tent = next(j for j in jobs if j.kind == "method" and j.family == "toy_fog" and j.seed == 1)
    assert tent.after == source_dir and tent.command[-1] == "x=1"  # the user's overrides come last
    assert "stage=tent" in tent.command and f"init_from={source_dir / 'checkpoints' / 'final.ckpt'}" in tent.command
    assert [(s.name, s.run_dir, s.ablation) for s in tent.steps] == [("tent", seed_dir / "tent", None)]
    no_align, from_adabn, no_negatives = jobs[-3:]
    # from the shared source: waits for the source job; from a chain stage: for the family's chain job
    assert no_align.after == source_dir and from_adabn.after == no_negatives.after == seed_dir
    assert f"init_from={source_dir / 'checkpoints' / 'final.ckpt'}" in no_align.command
    assert f"init_from={seed_dir / '0_adabn' / 'checkpoints' / 'final.ckpt'}" in from_adabn.command
    assert f"init_from={seed_dir / '1_align' / 'checkpoints' / 'final.ckpt'}" in no_negatives.command
    assert "stage=chain" in no_negatives.command and "chain.stages=[teach,propagate]" in no_negatives.command
    assert "++per_stage.teach.stage.module.neg_weight=0" in no_negatives.command
    assert [(s.label, s.run_dir) for s in no_negatives.steps] == [
        ("teach_no_negatives:teach", seed_dir / "ablations" / "teach_no_negatives" / "0_teach"),
        ("teach_no_negatives:propagate", seed_dir / "ablations" / "teach_no_negatives" / "1_propagate")]


def test_every_ablation_changes_exactly_its_options_in_the_stages_it_retrains():
    """Composed as the ablation's chain job composes each stage: the changed options land in stage.module, are
    valid options, and every other option of that stage is the recipe's."""
    from hydra import compose, initialize_config_dir

    from atp.ladder.ablations import ABLATIONS
    from atp.stages import check_stage_options
    from atp.train import apply_per_stage

    def module(stage: str, overrides: list[str]) -> dict:
        cfg = apply_per_stage(compose("train", overrides=["experiment=toy_cpu", f"stage={stage}", *overrides]),
                              overrides)
        check_stage_options(cfg.stage)
        return OmegaConf.to_container(cfg.stage.module, resolve=False)

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        recipe = {stage: module(stage, []) for stage in ("align", "teach", "propagate")}
        for ablation in ABLATIONS:
            changed: dict[str, dict[str, str]] = {}
            for change in ablation.changes:
                target, value = change.split("=", 1)
                stage, option = target.split(".", 1)
                changed.setdefault(stage, {})[option] = value
            assert set(changed) <= set(ablation.stages) and ablation.stages[-1] == "propagate", ablation.name
            for stage in changed:
                varied = module(stage, ablation.overrides())
                differing = {k for k in set(recipe[stage]) | set(varied) if recipe[stage].get(k) != varied.get(k)}
                assert differing == {option.split(".")[0] for option in changed[stage]}, (ablation.name, differing)
                for option, value in changed[stage].items():
                    got = OmegaConf.select(OmegaConf.create(varied), option)
                    assert str(got).lower() == ("none" if value == "null" else value.lower()), (ablation.name, option)


def test_ablation_deltas_against_the_full_recipe_by_hand():
    from atp.ladder.ablations import Ablation
    from atp.ladder.tables import ablation_markdown, summarise_ablations

    def run(family, seed, stage, miou, ablation=None):
        return {**_record(seed, stage, miou), "family": family, "ablation": ablation}

    no_neg = Ablation("no_neg", "negatives", "align", ("teach", "propagate"))
    no_mix = Ablation("no_mix", "ClassMix", "teach", ("propagate",))
    records = [run("a", 1, "teach", 30.0), run("a", 1, "propagate", 34.0), run("a", 2, "teach", 31.0),
               run("a", 2, "propagate", 36.0), run("b", 1, "teach", 20.0), run("b", 1, "propagate", 25.0),
               run("a", 1, "teach", 29.0, "no_neg"), run("a", 1, "propagate", 35.0, "no_neg"),
               run("a", 2, "teach", 30.5, "no_neg"), run("a", 2, "propagate", 33.0, "no_neg"),
               run("b", 1, "propagate", 24.5, "no_mix")]
    summary = summarise_ablations(records, [no_neg, no_mix], ["a", "b"])
    a = summary["no_neg"]["families"]["a"]
    # teach: 29-30 = -1, 30.5-31 = -0.5; propagate: 35-34 = +1, 33-36 = -3
    assert a["stages"]["teach"]["per_seed"] == {"1": -1.0, "2": -0.5}
    assert a["final"] == {"mean": -1.0, "std": pytest.approx(math.sqrt(8)), "n": 2, "per_seed": {"1": 1.0, "2": -3.0}}
    assert "b" not in summary["no_neg"]["families"]  # no run of it on b
    assert summary["no_mix"]["families"]["b"]["final"]["per_seed"] == {"1": -0.5}
    assert "a" not in summary["no_mix"]["families"]
    table = ablation_markdown(summary, ["a", "b"], {"b": "heldout"})
    assert "| ablation (removes) | starts from | a | b (held-out) | mean |" in table
    assert "| `no_neg` (negatives) | align | -1.00 ± 2.83 (2) | – | – |" in table
    assert "| `no_mix` (ClassMix) | teach | – | -0.50 (1) | – |" in table


def test_suite_table_bolds_the_best_method_and_averages_each_role():
    from atp.ladder.tables import suite_markdown

    def table(**values):
        rows = [{"stage": s, "student": None if v is None else {"mean": v}} for s, v in values.items()]
        return {"rows": rows}

    tables = {"x": table(source=10.0, tent=15.0, propagate=14.0, oracle=50.0),
              "y": table(source=20.0, tent=21.0, propagate=26.0, oracle=60.0),
              "z": table(source=30.0, tent=None, propagate=31.0, oracle=70.0)}
    text = suite_markdown(tables, {"x": "development", "y": "development", "z": "heldout"})
    assert "| family | role | source | tent | propagate | oracle |" in text
    assert "| x | development | 10.00 | **15.00** | 14.00 | 50.00 |" in text  # the oracle is not a method
    assert "| y | development | 20.00 | 21.00 | **26.00** | 60.00 |" in text
    assert "| z | heldout | 30.00 | – | **31.00** | 70.00 |" in text
    assert "| mean of 2 | development | 15.00 | 18.00 | 20.00 | 55.00 |" in text
    assert "mean of 1" not in text  # one held-out family: its row is the mean


@pytest.mark.slow
def test_a_baseline_and_an_ablation_train_only_themselves_from_the_ladders_runs(ladder_run, monkeypatch):
    """A second invocation with a baseline method and an ablation trains those two alone: the baseline from the
    shared source model, the ablation (a cheap stand-in: Teach without negatives, from the chain's Align) with
    its option changed; the tables gain the baseline's row and the ablation's Δ against the recipe's Teach."""
    from atp.ladder import cli
    from atp.ladder.ablations import Ablation

    out, args, code, _ = ladder_run
    assert code == 0
    tiny = Ablation("teach_no_negatives", "Teach's negatives", "align", ("teach",), ("teach.neg_weight=0",))
    monkeypatch.setattr(cli, "get_ablations", lambda names=None: [tiny])
    overrides = args[args.index("--out") + 2:]
    code, console = _run(["--families", "toy", "--seeds", "76", "--stages", ",".join(STAGES), "--methods", "tent",
                          "--no-oracle", "--jobs", "2", "--out", str(out), *overrides])
    assert code == 0, console
    assert sorted(_events(console, "done")) == [("toy", "76", "teach_no_negatives:teach"), ("toy", "76", "tent")]
    seed_dir = out / "toy" / "seed76"
    tent = json.loads((seed_dir / "tent" / "manifest.json").read_text())
    assert tent["init_from"] == str((out / "_source" / "seed76" / "checkpoints" / "final.ckpt").resolve())
    variant_dir = seed_dir / "ablations" / "teach_no_negatives" / "0_teach"
    variant = json.loads((variant_dir / "manifest.json").read_text())
    assert variant["init_from"] == str((seed_dir / "1_align" / "checkpoints" / "final.ckpt").resolve())
    assert OmegaConf.load(variant_dir / "config.yaml").stage.module.neg_weight == 0
    assert OmegaConf.load(seed_dir / "2_teach" / "config.yaml").stage.module.neg_weight == 1
    ladder = json.loads((out / "ladder.json").read_text())
    assert [row["stage"] for row in ladder["tables"]["toy"]["rows"]] == [
        "source", "adabn", "tent", "align", "teach", "oracle"]
    tent_miou = json.loads((seed_dir / "tent" / "eval" / "metrics.json").read_text())["mIoU"]["all19"]
    assert ladder["tables"]["toy"]["rows"][2]["student"]["per_seed"] == {"76": pytest.approx(tent_miou)}
    variant_miou = json.loads((variant_dir / "eval" / "metrics.json").read_text())["mIoU"]["all19"]
    delta = ladder["ablations"]["teach_no_negatives"]["families"]["toy"]["final"]
    assert delta["per_seed"] == {"76": pytest.approx(variant_miou - _miou(out, 76, "teach"))}
    assert not (variant_dir / "eval_teacher").exists()  # the ablation table reads students only
    markdown = (out / "ladder.md").read_text()
    assert "## Suite" in markdown and "## Ablations" in markdown and "| `teach_no_negatives` (Teach's negatives) |" in markdown
