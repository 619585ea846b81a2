"""``python -m atp.ladder [--families …|all] [--seeds 76,1] [--jobs N] [--out outputs/ladder] [--stages …]
[--methods …|all|none] [--ablations …|all|none] [overrides…]``.

Trains every (family, seed) chain, the baseline methods and the target oracles, then ATP's ablations
(each skipped when finished, resumed when not), evaluates every finished stage on the family's target val
(cached in ``<stage dir>/eval``), and writes ``<out>/ladder.md`` and ``ladder.json``: the suite table
(every family × every method), the ablation table (Δ against the full recipe) and per-family tables. When every family has the same source data (the toy
families do), the source model is trained once per seed in ``<out>/_source/seed<s>`` and each family's
chain starts from it (its source row: that model on the family's target val, cached in
``<out>/_source/seed<s>/eval_<family>``). ``--jobs N`` runs N jobs at once, each on its share of the
cores. Extra ``key=value`` arguments go to every ``atp.train`` job (and to the evaluation's model/data
config). Exit status 1 when any job or evaluation failed.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from atp.atomic import atomic_write_json, atomic_write_text
from atp.data.toy import ensure_toy_data
from atp.errors import UserError
from atp.ladder import plan, tables
from atp.ladder.ablations import ABLATIONS, Ablation, get_ablations
from atp.ladder.jobs import JobOutcome, Progress, format_duration, job_environment, run_jobs, threads_per_job
from atp.run import pipeline
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
    parser.add_argument("--methods", default="all",
                        help="comma-separated baseline stages, each trained from the source model beside the chain "
                             "(default all: every registered baseline not in --stages), or none")
    parser.add_argument("--ablations", default="all",
                        help=f"comma-separated ablations of the recipe (default all: {', '.join(a.name for a in ABLATIONS)}), "
                             "or none")
    parser.add_argument("--ablation-families", default="development",
                        help="families the ablations run on: development (default: those whose dataset.suite is "
                             "development), all, or a comma-separated list")
    parser.add_argument("--ablation-seeds", default=None,
                        help="seeds the ablations run with: all, or a comma-separated list (default: the first of "
                             "--seeds)")
    parser.add_argument("--experiment", default="toy_cpu", help="recipe under conf/experiment/ (default toy_cpu)")
    parser.add_argument("--no-oracle", action="store_true", help="do not train the target oracle")
    parser.add_argument("--oracle-seeds", default=None,
                        help="comma-separated seeds to train the oracle with, or all (default: the first of "
                             "--seeds; the oracle is a ceiling, and every seed's gap closed uses its family's)")
    parser.add_argument("--no-share-source", action="store_true",
                        help="train the source model in every family's chain, even when their source data "
                             "are the same")
    parser.add_argument("--jobs", type=int, default=1,
                        help="training jobs at once, each with its share of the CPU threads (default 1)")
    parser.add_argument("overrides", nargs="*", help="extra atp.train overrides (key=value) for every job")
    return parser.parse_args(argv)


def _names(text: str, option: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserError(f"ladder: {option} is empty; give a comma-separated list")
    return names


def _refuse_unknown(option: str, chosen: list, allowed, why: str) -> None:
    """One error naming every value of ``option`` that is not in ``allowed``, and why."""
    unknown = [value for value in chosen if value not in allowed]
    if unknown:
        raise UserError(f"ladder: {option} {','.join(map(str, unknown))}: {why}")


def resolve_families(text: str, overrides: list[str]) -> list[str]:
    available = plan.discover_families(overrides)
    if text == "all":
        return available
    families = _names(text, "--families")
    _refuse_unknown("--families", families, available, f"no such toy family; the dataset/toy*.yaml configs "
                    f"are {', '.join(available) or 'none'} (or use --families all)")
    return families


def resolve_seeds(text: str, option: str = "--seeds") -> list[int]:
    try:
        return [int(seed) for seed in _names(text, option)]
    except ValueError:
        raise UserError(f"ladder: {option} {text!r}: give comma-separated integers, e.g. {option} 76,1") from None


def resolve_stages(text: str | None) -> list[str]:
    if text is None:
        return list(plan.LADDER_STAGES)
    stages = _names(text, "--stages")
    _refuse_unknown("--stages", stages, STAGES, f"not a registered stage; choose from {', '.join(STAGES)}")
    return stages


def resolve_oracle_seeds(text: str | None, seeds: list[int], no_oracle: bool) -> list[int]:
    if no_oracle:
        return []
    if text is None:
        return seeds[:1]
    if text == "all":
        return list(seeds)
    chosen = resolve_seeds(text, "--oracle-seeds")
    _refuse_unknown("--oracle-seeds", chosen, seeds,
                    f"not among --seeds {','.join(map(str, seeds))}; choose some of those, or all")
    return chosen


def resolve_methods(text: str, stages: list[str]) -> list[str]:
    """Baseline stages trained beside the chain: every registered baseline that is not a stage of the chain."""
    available = [name for name, cls in STAGES.items() if cls.baseline and name not in stages]
    if text == "none":
        return []
    methods = available if text == "all" else _names(text, "--methods")
    _refuse_unknown("--methods", methods, available,
                    f"not a baseline stage outside --stages; choose from {', '.join(available) or 'none'}")
    if methods and "source" not in stages:
        raise UserError("ladder: --methods start from the source model, so --stages must include source "
                        "(or give --methods none)")
    return methods


def resolve_ablations(text: str, stages: list[str]) -> list:
    """The ablations to run; each needs the rung it starts from and the stages it retrains in the chain."""
    if text == "none":
        return []
    try:
        ablations = get_ablations(None if text == "all" else _names(text, "--ablations"))
    except ValueError as err:
        raise UserError(f"ladder: --ablations: {err}") from None
    usable = [a for a in ablations if a.start in stages and set(a.stages) <= set(stages)]
    if text != "all" and len(usable) < len(ablations):
        missing = [a.name for a in ablations if a not in usable]
        raise UserError(f"ladder: --ablations {','.join(missing)}: the rung they start from or the stages they "
                        f"retrain are not in --stages {','.join(stages)}")
    return usable


def resolve_ablation_runs(families_text: str, seeds_text: str | None, families: list[str], seeds: list[int],
                          roles: dict[str, str | None]) -> frozenset[tuple[str, int]]:
    """The (family, seed) pairs the ablations run on."""
    if families_text == "all":
        chosen = families
    elif families_text == "development":
        chosen = [f for f in families if roles.get(f) == plan.DEVELOPMENT]
    else:
        chosen = _names(families_text, "--ablation-families")
        _refuse_unknown("--ablation-families", chosen, families, "not among --families")
    if seeds_text is None:
        ablation_seeds = seeds[:1]
    elif seeds_text == "all":
        ablation_seeds = seeds
    else:
        ablation_seeds = resolve_seeds(seeds_text, "--ablation-seeds")
        _refuse_unknown("--ablation-seeds", ablation_seeds, seeds, "not among --seeds")
    return frozenset((family, seed) for family in chosen for seed in ablation_seeds)


def row_order(stages: list[str], methods: list[str]) -> list[str]:
    """The rows of a family's table: source, the baselines (those of the chain, then the methods), the rest."""
    first = [s for s in stages if s == "source"]
    baselines = [s for s in stages if STAGES[s].baseline] + methods
    return [*first, *baselines, *(s for s in stages if s not in first and s not in baselines)]


def train_config(experiment: str, family: str, overrides: list[str]):
    """The composed ``train`` config of a family: the model/data config its checkpoints are evaluated with."""
    from atp.config import SEARCHPATH_KEY, compose_cli

    # of Hydra's own keys only the search path (the user's config folders) matters to the composed config
    kept = [o for o in overrides if not o.lstrip("+~").startswith("hydra.") or o.lstrip("+~").startswith(SEARCHPATH_KEY)]
    return compose_cli([f"experiment={experiment}", f"dataset={family}", *kept], "train")


def evaluate_step(step: plan.Step, train_cfg) -> dict:
    """Student (and, where reported, teacher) metrics of a finished step's final checkpoint; cached."""
    from atp.evaluate import evaluate_checkpoint

    manifest = step.manifest()
    ckpt = pipeline.manifest_checkpoint(manifest)
    record = {"family": step.family, "seed": step.seed, "stage": step.name, "ablation": step.ablation,
              "run_dir": str(step.run_dir)}
    folder = step.run_dir / step.eval_name
    record["student"] = evaluate_checkpoint(ckpt, folder, train_cfg, reuse=True, progress=False)
    # the EMA teacher where it trains the student (the oracle's stage is source); the ablation table reads students
    reported = get_stage(manifest["stage"]).teaches_with_pseudo_labels and step.ablation is None
    record["teacher"] = (evaluate_checkpoint(ckpt, folder.with_name(f"{step.eval_name}_teacher"), train_cfg,
                                             weights="teacher", reuse=True, progress=False) if reported else None)
    return record


@dataclass(frozen=True)
class Selection:
    """What the command line asked for, checked."""

    families: list[str]
    seeds: list[int]
    stages: list[str]
    oracle_seeds: list[int]
    methods: list[str]
    ablations: list[Ablation]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        stages = resolve_stages(args.stages)
        seeds = resolve_seeds(args.seeds)
        chosen = Selection(resolve_families(args.families, args.overrides), seeds, stages,
                           resolve_oracle_seeds(args.oracle_seeds, seeds, args.no_oracle),
                           resolve_methods(args.methods, stages), resolve_ablations(args.ablations, stages))
        if args.jobs < 1:
            raise UserError(f"ladder: --jobs {args.jobs}: give the number of jobs to run at once, 1 or more")
        plan.check_overrides(args.overrides)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # SIGTERM (kill, a scheduler) unwinds like Ctrl-C, so the running job is stopped too, not orphaned
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        return run_ladder(args, chosen, argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def decide_share(args: argparse.Namespace, stages: list[str], datasets: dict[str, dict]) -> tuple[bool, str | None]:
    """Whether the families share one source model per seed, and why not (None when they do or it was not asked)."""
    if args.no_share_source or stages[:1] != ["source"]:
        return False, None
    why_not = plan.source_difference(datasets)
    return why_not is None, why_not


def run_ladder(args: argparse.Namespace, chosen: Selection, argv: list[str] | None) -> int:
    """Train, evaluate and tabulate; 1 when any job or evaluation failed."""
    families, seeds, stages, oracle_seeds = chosen.families, chosen.seeds, chosen.stages, chosen.oracle_seeds
    started = time.time()
    out = Path(args.out).resolve()
    command = shlex.join(["python", "-m", "atp.ladder", *(sys.argv[1:] if argv is None else argv)])
    try:
        configs = {family: train_config(args.experiment, family, args.overrides) for family in families}
    except Exception as err:  # a bad override: every job would fail the same way
        print(f"error: ladder: the train config does not compose with these overrides: {err}", file=sys.stderr)
        return 2
    datasets = {family: OmegaConf.to_container(cfg.dataset, resolve=True) for family, cfg in configs.items()}
    roles = {family: dataset.get("suite") for family, dataset in datasets.items()}
    try:
        ablation_runs = resolve_ablation_runs(args.ablation_families, args.ablation_seeds, families, seeds, roles)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    share, why_not = decide_share(args, stages, datasets)
    for family, dataset in datasets.items():
        # here, one family after the other: concurrent jobs would generate the same data at once, and the
        # shared source is evaluated on families whose own jobs have not run yet
        try:
            ensure_toy_data(dataset)
        except Exception as err:
            print(f"error: ladder: generating the toy data of {family} failed: {err}", file=sys.stderr)
            return 2
    jobs = plan.plan_jobs(out, families, seeds, stages, args.experiment, args.overrides, oracle_seeds, share,
                          tuple(chosen.methods), tuple(chosen.ablations), ablation_runs)
    progress = Progress([step for job in jobs for step in job.steps])
    threads = threads_per_job(args.jobs)
    progress.say(f"ladder: {len(families)} families × {len(seeds)} seeds × {len(stages)} stages "
                 f"({' → '.join(stages)}) + {len(chosen.methods)} baseline(s) ({', '.join(chosen.methods) or 'none'})"
                 f" + oracle of seed(s) {', '.join(map(str, oracle_seeds)) or 'none'} + "
                 + (f"{len(chosen.ablations)} ablation(s) on {len(ablation_runs)} (family, seed) pair(s)"
                    if chosen.ablations and ablation_runs else "no ablations") + f"; {args.jobs} job(s) at once"
                 f"{f', {threads} thread(s) each' if args.jobs > 1 else ''} → {out}")
    if share:
        progress.say(f"ladder: one source model per seed in {out / plan.SHARED_DIR}, shared by every family "
                     "(their source data are the same)")
    elif why_not:
        progress.say(f"ladder: training the source model per family: {why_not}")
    if args.jobs > 1:
        import torch

        torch.set_num_threads(threads)  # the evaluations here run beside the other jobs
    failures, records = [], []

    def evaluate(outcome: JobOutcome) -> None:
        job = outcome.job
        if not outcome.ok:
            why = (f"exit {outcome.returncode}, log {job.log}" if outcome.returncode is not None
                   else f"not run, the job it starts from failed ({job.after})")
            failures.append(f"{job.family} seed {job.seed} {job.kind}"
                            f"{f' {job.run_dir.name}' if job.kind in (plan.METHOD, plan.ABLATION) else ''}: {why}")
        for step in job.rungs:
            if step.manifest() is None:
                continue
            try:
                records.append(evaluate_step(step, configs[step.family]))
            except Exception as err:  # one bad checkpoint must not lose the other results
                failures.append(f"{step.family} seed {step.seed} {step.label}: evaluation failed: {err}")
                progress.say(f"    {step.family} seed {step.seed} {step.label}: evaluation failed: {err}")

    run_jobs(jobs, progress, slots=args.jobs, env=job_environment(args.jobs), on_end=evaluate)
    finished = time.time()
    rows = row_order(stages, chosen.methods)
    ablation_names = [a.name for a in chosen.ablations]
    # in plan order whatever order the concurrent jobs ended in (a table lists seeds as its records do)
    records.sort(key=lambda r: (families.index(r["family"]), seeds.index(r["seed"]),
                                -1 if r["ablation"] is None else ablation_names.index(r["ablation"]),
                                [*rows, plan.ORACLE].index(r["stage"])))
    summary = {family: tables.summarise_family([r for r in records if r["family"] == family], rows)
               for family in families}
    ablation_summary = tables.summarise_ablations(records, chosen.ablations, families)
    header = [f"* command: `{command}`",
              f"* date: {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}; run time of this invocation: "
              f"{format_duration(finished - started)}; {args.jobs} training job(s) at once",
              f"* recipe: experiment={args.experiment}; seeds {', '.join(map(str, seeds))}; output {out}",
              "* families: " + ", ".join(f"{f} ({roles[f] or 'no dataset.suite'})" for f in families),
              "* source: " + ("one source model per seed, shared by every family (their source data are the same); "
                              "its row is that model on each family's target val" if share
                              else "trained in every family's chain" + (f" ({why_not})" if why_not else "")),
              "* baselines: " + (", ".join(chosen.methods) + "; each trained from the source model in its own job"
                                 if chosen.methods else "none beside the chain's"),
              "* oracle: " + (f"seed(s) {', '.join(map(str, oracle_seeds))}; the gap closed of a seed without its "
                              "own oracle uses the mean of its family's oracle runs" if oracle_seeds else "not trained"),
              "* ablations: " + (f"{len(chosen.ablations)} on " + ", ".join(
                  f"{f} seed {s}" for f, s in sorted(ablation_runs, key=lambda p: (families.index(p[0]), p[1])))
                                 if chosen.ablations and ablation_runs else "none")]
    text = tables.ladder_markdown(header, summary, failures, roles, ablation_summary)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ladder.md", text)
    atomic_write_json(out / "ladder.json", {
        "command": command, "started_at": started, "finished_at": finished, "run_seconds": round(finished - started, 1),
        "experiment": args.experiment, "families": families, "roles": roles, "seeds": seeds, "stages": stages,
        "methods": chosen.methods, "overrides": args.overrides, "oracle": bool(oracle_seeds),
        "oracle_seeds": oracle_seeds, "shared_source": share, "jobs": args.jobs, "tables": summary,
        "ablations": ablation_summary, "failures": failures,
        "runs": [{k: r[k] for k in ("family", "seed", "stage", "ablation", "run_dir")}
                 | {"student_mIoU": r["student"]["mIoU"], "teacher_mIoU": r["teacher"] and r["teacher"]["mIoU"]}
                 for r in records],
    })
    progress.say(f"\n{text}")
    progress.say(f"{progress.overall()}; {format_duration(finished - started)}; wrote {out / 'ladder.md'} and "
                 f"ladder.json")
    if failures:
        progress.say(f"ladder: {len(failures)} failure(s):\n" + "\n".join(f"  {f}" for f in failures))
    return 1 if failures else 0
