"""What the ladder runs and where: families, stages, one ``atp.train`` job per (family, seed) and its oracle."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from atp import pipeline
from atp.data.config import find_conf_dir
from atp.errors import UserError

#: The rungs the ladder compares, in chain order; a rung the stage registry lacks is left out.
LADDER_STAGES = ("source", "adabn", "align", "teach", "propagate")
ORACLE = "oracle"
#: Keys the ladder sets itself for every job; an extra override of one of them is refused.
RESERVED_KEYS = ("stage", "dataset", "seed", "experiment", "chain.stages", "init_from", "hydra.run.dir",
                 "hydra.job_logging.root.handlers")


def discover_families(conf_dir: Path | None = None) -> list[str]:
    """Every toy shift family: the ``conf/dataset/toy*.yaml`` configs (``toy`` first)."""
    folder = (conf_dir or find_conf_dir()) / "dataset"
    return sorted(path.stem for path in folder.glob("toy*.yaml"))


@dataclass(frozen=True)
class Step:
    """One rung of one run: a stage of a chain job, or the oracle; ``run_dir`` holds its manifest."""

    family: str
    seed: int
    name: str
    run_dir: Path

    def manifest(self) -> dict | None:
        """The step's manifest when it finished (status complete and the final checkpoint present)."""
        manifest = pipeline.read_manifest(self.run_dir)
        return manifest if manifest and pipeline.is_finished(manifest) else None


@dataclass(frozen=True)
class Job:
    """One ``python -m atp.train`` subprocess, its steps in the order it runs them, and its log."""

    family: str
    seed: int
    kind: str  # "chain" | ORACLE
    run_dir: Path
    steps: tuple[Step, ...]
    command: tuple[str, ...]

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
              overrides: list[str], oracle: bool = True) -> list[Job]:
    """Per family and seed: the chain job in ``<out>/<family>/seed<s>``, then the oracle in ``…/oracle``."""
    jobs = []
    for family in families:
        for seed in seeds:
            job_dir = out / family / f"seed{seed}"
            common = _common_args(experiment, family, seed, overrides)
            steps = tuple(Step(family, seed, stage, chain_stage_dir(job_dir, i, stage)) for i, stage in enumerate(stages))
            jobs.append(Job(family, seed, "chain", job_dir, steps, (
                *common, "stage=chain", f"chain.stages=[{','.join(stages)}]", f"hydra.run.dir={job_dir}",
                *overrides)))
            if oracle:
                oracle_dir = job_dir / ORACLE
                jobs.append(Job(family, seed, ORACLE, oracle_dir, (Step(family, seed, ORACLE, oracle_dir),), (
                    *common, *oracle_overrides(family), f"hydra.run.dir={oracle_dir}", *overrides)))
    return jobs


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
