"""What the ladder runs and where: families, stages, the shared source per seed, one ``atp.train`` chain job
per (family, seed) and the oracles."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path

from atp.config import config_dirs
from atp.errors import UserError
from atp.ladder.ablations import Ablation
from atp.run import pipeline

#: The rungs the ladder compares, in chain order; a rung the stage registry lacks is left out.
LADDER_STAGES = ("source", "adabn", "align", "teach", "propagate")
ORACLE = "oracle"
SOURCE_JOB = "source"
METHOD = "method"  # a baseline stage trained from the source model in its own job
ABLATION = "ablation"
ABLATION_DIR = "ablations"
#: The family label of the shared source job in the progress lines and failures (it trains for every family).
SHARED = "shared"
SHARED_DIR = "_source"
#: Keys the ladder sets itself for every job; an extra override of one of them is refused.
RESERVED_KEYS = ("stage", "dataset", "seed", "experiment", "chain.stages", "init_from", "hydra.run.dir",
                 "hydra.job_logging.root.handlers")


#: ``dataset.suite`` of a family: recipe changes are decided on the development families and only reported,
#: unchanged, on the held-out ones (registered before any tuning)
DEVELOPMENT, HELD_OUT = "development", "heldout"


def discover_families(overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every toy shift family: the ``dataset/toy*.yaml`` configs of atp's config tree and of the folders a
    ``hydra.searchpath=[…]`` override adds (``toy`` first)."""
    return sorted({path.stem for folder in config_dirs(overrides) for path in (folder / "dataset").glob("toy*.yaml")})


@dataclass(frozen=True)
class Step:
    """One rung of one run: a stage of a chain job, the oracle, or a family's view of the shared source.

    ``run_dir`` holds its manifest; its evaluation on ``family``'s target val is cached in
    ``run_dir/<eval_name>`` (``eval_<family>`` for the shared source, which every family evaluates).
    """

    family: str
    seed: int
    name: str
    run_dir: Path
    eval_name: str = "eval"
    ablation: str | None = None  # the ablation this step belongs to (None: the recipe's own run)

    @property
    def label(self) -> str:
        """How progress lines and failures name the step: the stage, after its ablation's name."""
        return self.name if self.ablation is None else f"{self.ablation}:{self.name}"

    def manifest(self) -> dict | None:
        """The step's manifest when it finished (status complete and the final checkpoint present)."""
        manifest = pipeline.read_manifest(self.run_dir)
        return manifest if manifest and pipeline.is_finished(manifest) else None


@dataclass(frozen=True)
class Job:
    """One ``python -m atp.train`` subprocess, its steps in the order it runs them, and its log.

    ``rungs`` are the steps evaluated once it ends (its steps, or every family's view of a shared
    source); ``after`` is the run dir of the job it must wait for (a chain waits for its shared source).
    """

    family: str
    seed: int
    kind: str  # "chain" | SOURCE_JOB | ORACLE | METHOD | ABLATION
    run_dir: Path
    steps: tuple[Step, ...]
    command: tuple[str, ...]
    rungs: tuple[Step, ...] = ()
    after: Path | None = None

    @property
    def log(self) -> Path:
        return self.run_dir / "train.log"


def check_overrides(overrides: list[str]) -> None:
    """Refuse extra overrides of the keys the ladder sets per job, naming the option to use instead."""
    options = {"dataset": "--families", "seed": "--seeds", "experiment": "--experiment", "chain.stages": "--stages",
               "hydra.run.dir": "--out", "stage": "--stages"}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in RESERVED_KEYS:
            use = f"use {options[key]}" if key in options else "the ladder sets it per job"
            raise UserError(f"ladder: the override {override!r} sets {key}, which the ladder sets per job ({use})")


def chain_stage_dir(job_dir: Path, index: int, stage: str) -> Path:
    """Where ``stage=chain`` runs its ``index``-th stage (``atp.train.run_chain``)."""
    return job_dir / f"{index}_{stage}"


def plan_jobs(out: Path, families: list[str], seeds: list[int], stages: list[str], experiment: str,
              overrides: list[str], oracle_seeds: list[int], share_source: bool = False, methods: tuple[str, ...] = (),
              ablations: tuple[Ablation, ...] = (), ablation_runs: frozenset[tuple[str, int]] = frozenset()
              ) -> list[Job]:
    """Every job in the order the ladder starts them.

    With ``share_source`` (and ``source`` the first stage): one source job per seed in
    ``<out>/_source/seed<s>`` first, then per family and seed the chain of the other stages in
    ``<out>/<family>/seed<s>``, started from that source's final checkpoint. Without it, each chain
    job runs all the stages. Per family and seed, each of ``methods`` (baseline stages) is one job in
    ``…/<method>`` started from the source model, and the oracle of a seed in ``oracle_seeds`` goes in
    ``…/oracle``. Last, for each (family, seed) in ``ablation_runs``, each ablation is one chain job in
    ``…/ablations/<name>`` started from the rung it names (waiting for the job that trains it).
    """
    share_source = share_source and stages[:1] == ["source"]
    jobs, chain_stages = [], stages[1:] if share_source else stages
    shared: dict[int, Path] = {}
    if share_source:
        for seed in seeds:
            job_dir = shared[seed] = out / SHARED_DIR / f"seed{seed}"
            rungs = tuple(Step(family, seed, "source", job_dir, f"eval_{family}") for family in families)
            jobs.append(Job(SHARED, seed, SOURCE_JOB, job_dir, (Step(SHARED, seed, "source", job_dir),), (
                *_common_args(experiment, families[0], seed, overrides), "stage=source", f"hydra.run.dir={job_dir}",
                *overrides), rungs))
    for family in families:
        for seed in seeds:
            job_dir = out / family / f"seed{seed}"
            common = _common_args(experiment, family, seed, overrides)
            if chain_stages:
                steps = tuple(Step(family, seed, stage, chain_stage_dir(job_dir, i, stage))
                              for i, stage in enumerate(chain_stages))
                init = ([f"init_from={final_checkpoint(shared[seed])}"] if share_source else [])
                jobs.append(Job(family, seed, "chain", job_dir, steps, (
                    *common, "stage=chain", f"chain.stages=[{','.join(chain_stages)}]", *init,
                    f"hydra.run.dir={job_dir}", *overrides), steps, shared.get(seed)))
            for method in methods:
                method_dir = job_dir / method
                init, after = _start(SOURCE_JOB, job_dir, chain_stages, shared.get(seed))
                step = Step(family, seed, method, method_dir)
                jobs.append(Job(family, seed, METHOD, method_dir, (step,), (
                    *common, f"stage={method}", f"init_from={init}", f"hydra.run.dir={method_dir}", *overrides),
                    (step,), after))
            if seed in oracle_seeds:
                oracle_dir = job_dir / ORACLE
                step = Step(family, seed, ORACLE, oracle_dir)
                jobs.append(Job(family, seed, ORACLE, oracle_dir, (step,), (
                    *common, *oracle_overrides(family), f"hydra.run.dir={oracle_dir}", *overrides), (step,)))
    for family in families:
        for seed in seeds:
            if (family, seed) not in ablation_runs:
                continue
            job_dir = out / family / f"seed{seed}"
            for ablation in ablations:
                variant_dir = job_dir / ABLATION_DIR / ablation.name
                init, after = _start(ablation.start, job_dir, chain_stages, shared.get(seed))
                steps = tuple(Step(family, seed, stage, chain_stage_dir(variant_dir, i, stage), ablation=ablation.name)
                              for i, stage in enumerate(ablation.stages))
                jobs.append(Job(family, seed, ABLATION, variant_dir, steps, (
                    *_common_args(experiment, family, seed, overrides), "stage=chain",
                    f"chain.stages=[{','.join(ablation.stages)}]", f"init_from={init}", f"hydra.run.dir={variant_dir}",
                    *ablation.overrides(), *overrides), steps, after))
    return jobs


def _start(rung: str, job_dir: Path, chain_stages: list[str], shared_dir: Path | None) -> tuple[Path, Path]:
    """The final checkpoint of ``rung`` (``source`` or a stage of the family's chain) and the job that trains it."""
    if rung == SOURCE_JOB and shared_dir is not None:
        return final_checkpoint(shared_dir), shared_dir
    if rung not in chain_stages:
        raise ValueError(f"{rung} is not trained by the ladder's chain {chain_stages}")
    return final_checkpoint(chain_stage_dir(job_dir, chain_stages.index(rung), rung)), job_dir


def final_checkpoint(job_dir: Path) -> Path:
    """The final checkpoint a stage run writes in ``job_dir`` (e.g. ``stage=source`` in ``hydra.run.dir=job_dir``)."""
    return job_dir / "checkpoints" / "final.ckpt"


#: Dataset keys that describe only the target or where the data lie: they may differ between families
#: that share a source model. Everything else a source stage reads (generator arguments, the source
#: entry, crops, scale, flips…) must be equal.
TARGET_ONLY_KEYS = ("name", "missing_data_fix", "suite", "target", "target_val", "toy.shift", "toy.out")


def source_difference(datasets: dict[str, dict]) -> str | None:
    """None when every family's source data and source training inputs are the same, else why not.

    ``datasets``: per family its resolved ``dataset`` config (the composed ``train`` config's). Only toy
    families can share: their generator draws the source domain independently of ``toy.shift``, and
    ``toy.out`` is only the folder of each family's copy, so ``source.root`` is compared relative to it.
    """
    reference_family, reference = None, None
    for family, dataset in datasets.items():
        if not isinstance(dataset.get("toy"), dict):
            return f"{family} is not a generated toy family (no dataset.toy)"
        key = _without(dataset, TARGET_ONLY_KEYS)
        root, out = str(key.get("source", {}).get("root", "")), str(dataset["toy"].get("out", ""))
        if out and (root == out or root.startswith(out.rstrip("/") + "/")):
            key["source"]["root"] = "<toy.out>" + root[len(out.rstrip("/")):]
        if reference is None:
            reference_family, reference = family, key
            continue
        differing = _first_difference(reference, key)
        if differing is not None:
            return f"dataset.{differing} differs between {reference_family} and {family}"
    return None


def _without(config: dict, dotted_keys: tuple[str, ...]) -> dict:
    config = copy.deepcopy(config)
    for dotted in dotted_keys:
        *parents, last = dotted.split(".")
        node = config
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return config


def _first_difference(a, b, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(key, _MISSING), b.get(key, _MISSING), f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    return None if a == b else prefix[:-1]


_MISSING = object()


def oracle_overrides(family: str) -> list[str]:
    """``stage=source`` (its recipe schedule) trained on the target's train split with its labels.

    The source entry becomes the target entry (same root and scale, split train, labelled because the
    source stream loads labels). The dataset is renamed so that no ``init_from=auto`` lookup, which
    matches runs by dataset name, ever starts a stage from the oracle.
    """
    return ["stage=source", "dataset.source=${dataset.target}", f"dataset.name={family}-oracle"]


def _common_args(experiment: str, family: str, seed: int, overrides: list[str]) -> list[str]:
    # Log records go to the console handler only: the job's whole output is captured in train.log,
    # which is also Hydra's file-handler path, so records would otherwise appear twice.
    args = [sys.executable, "-m", "atp.train", f"experiment={experiment}", f"dataset={family}", f"seed={seed}",
            "hydra.job_logging.root.handlers=[console]"]
    if not any(o.split("=", 1)[0].lstrip("+~") == "trainer.enable_progress_bar" for o in overrides):
        args.append("trainer.enable_progress_bar=false")  # a log file has no use for a redrawn bar
    return args
