"""``python -m atp.ladder [--families …|all] [--seeds 76,1] [--out outputs/ladder] [--stages …] [overrides…]``.

Trains every (family, seed) chain and its target oracle (each skipped when finished, resumed when
not), evaluates every finished stage on the family's target val (cached in ``<stage dir>/eval``), and
writes ``<out>/ladder.md`` and ``ladder.json``. Extra ``key=value`` arguments go to every ``atp.train``
job (and to the evaluation's model/data config). Exit status 1 when any job or evaluation failed.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path

from atp import pipeline
from atp.atomic import atomic_write_json, atomic_write_text
from atp.errors import UserError
from atp.ladder import plan, tables
from atp.ladder.jobs import Progress, format_duration, run_job
from atp.stages import STAGES, get_stage


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m atp.ladder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="all",
                        help="comma-separated dataset configs, or all (every conf/dataset/toy*.yaml; default)")
    parser.add_argument("--seeds", default="76,1", help="comma-separated training seeds (default 76,1)")
    parser.add_argument("--out", default="outputs/ladder", help="output folder (default outputs/ladder)")
    parser.add_argument("--stages", default=None,
                        help="comma-separated chain stages (default: source,adabn,align,teach,propagate, "
                             "those the stage registry has)")
    parser.add_argument("--experiment", default="toy_cpu", help="recipe under conf/experiment/ (default toy_cpu)")
    parser.add_argument("--no-oracle", action="store_true", help="do not train the target oracle")
    parser.add_argument("overrides", nargs="*", help="extra atp.train overrides (key=value) for every job")
    return parser.parse_args(argv)


def _names(text: str, option: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserError(f"ladder: {option} is empty; give a comma-separated list")
    return names


def resolve_families(text: str) -> list[str]:
    available = plan.discover_families()
    if text == "all":
        return available
    families = _names(text, "--families")
    unknown = [f for f in families if f not in available]
    if unknown:
        raise UserError(f"ladder: --families {','.join(unknown)}: no such toy family; the conf/dataset/toy*.yaml "
                        f"configs are {', '.join(available) or 'none'} (or use --families all)")
    return families


def resolve_seeds(text: str) -> list[int]:
    try:
        return [int(seed) for seed in _names(text, "--seeds")]
    except ValueError:
        raise UserError(f"ladder: --seeds {text!r}: give comma-separated integers, e.g. --seeds 76,1") from None


def resolve_stages(text: str | None) -> list[str]:
    if text is None:
        return list(plan.LADDER_STAGES)
    stages = _names(text, "--stages")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UserError(f"ladder: --stages {','.join(unknown)}: not a registered stage; choose from "
                        f"{', '.join(STAGES)}")
    return stages


def train_config(experiment: str, family: str, overrides: list[str]):
    """The composed ``train`` config of a family: the model/data config its checkpoints are evaluated with."""
    from atp.data.config import compose_cli

    return compose_cli([f"experiment={experiment}", f"dataset={family}",
                        *(o for o in overrides if not o.lstrip("+~").startswith("hydra."))], "train")


def evaluate_step(step: plan.Step, train_cfg) -> dict:
    """Student (and, where reported, teacher) metrics of a finished step's final checkpoint; cached."""
    from atp.evaluate import evaluate_checkpoint

    manifest = step.manifest()
    ckpt = pipeline.manifest_checkpoint(manifest)
    record = {"family": step.family, "seed": step.seed, "stage": step.name, "run_dir": str(step.run_dir)}
    record["student"] = evaluate_checkpoint(ckpt, step.run_dir / "eval", train_cfg, reuse=True, progress=False)
    record["teacher"] = (evaluate_checkpoint(ckpt, step.run_dir / "eval_teacher", train_cfg, weights="teacher",
                                             reuse=True, progress=False)
                         if get_stage(manifest["stage"]).teaches_with_pseudo_labels else None)  # oracle: source
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        families, seeds = resolve_families(args.families), resolve_seeds(args.seeds)
        stages = resolve_stages(args.stages)
        plan.check_overrides(args.overrides)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # SIGTERM (kill, a scheduler) unwinds like Ctrl-C, so the running job is stopped too, not orphaned
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        return run_ladder(args, families, seeds, stages, argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_ladder(args: argparse.Namespace, families: list[str], seeds: list[int], stages: list[str],
               argv: list[str] | None) -> int:
    """Train, evaluate and tabulate; 1 when any job or evaluation failed."""
    started = time.time()
    out = Path(args.out).resolve()
    command = shlex.join(["python", "-m", "atp.ladder", *(sys.argv[1:] if argv is None else argv)])
    jobs = plan.plan_jobs(out, families, seeds, stages, args.experiment, args.overrides, oracle=not args.no_oracle)
    progress = Progress([step for job in jobs for step in job.steps])
    progress.say(f"ladder: {len(families)} families × {len(seeds)} seeds × "
                 f"{len(stages) + (not args.no_oracle)} steps ({' → '.join(stages)}"
                 f"{'' if args.no_oracle else ' + oracle'}) → {out}")
    failures, records, configs = [], [], {}
    for job in jobs:
        outcome = run_job(job, progress)
        if not outcome.ok:
            failures.append(f"{job.family} seed {job.seed} {job.kind}: exit {outcome.returncode}, log {job.log}")
        for step in job.steps:
            if step.manifest() is None:
                continue
            try:
                if step.family not in configs:
                    configs[step.family] = train_config(args.experiment, step.family, args.overrides)
                records.append(evaluate_step(step, configs[step.family]))
            except Exception as err:  # one bad checkpoint must not lose the other results
                failures.append(f"{step.family} seed {step.seed} {step.name}: evaluation failed: {err}")
                progress.say(f"    {step.family} seed {step.seed} {step.name}: evaluation failed: {err}")
    finished = time.time()
    summary = {family: tables.summarise_family([r for r in records if r["family"] == family], stages)
               for family in families}
    header = [f"* command: `{command}`",
              f"* date: {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}; run time of this invocation: "
              f"{format_duration(finished - started)}",
              f"* recipe: experiment={args.experiment}; seeds {', '.join(map(str, seeds))}; output {out}"]
    text = tables.ladder_markdown(header, summary, failures)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ladder.md", text)
    atomic_write_json(out / "ladder.json", {
        "command": command, "started_at": started, "finished_at": finished, "run_seconds": round(finished - started, 1),
        "experiment": args.experiment, "families": families, "seeds": seeds, "stages": stages,
        "overrides": args.overrides, "oracle": not args.no_oracle, "tables": summary, "failures": failures,
        "runs": [{k: r[k] for k in ("family", "seed", "stage", "run_dir")}
                 | {"student_mIoU": r["student"]["mIoU"], "teacher_mIoU": r["teacher"] and r["teacher"]["mIoU"]}
                 for r in records],
    })
    progress.say(f"\n{text}")
    progress.say(f"{progress.overall()}; {format_duration(finished - started)}; wrote {out / 'ladder.md'} and "
                 f"ladder.json")
    if failures:
        progress.say(f"ladder: {len(failures)} failure(s):\n" + "\n".join(f"  {f}" for f in failures))
    return 1 if failures else 0
