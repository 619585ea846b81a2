"""``python -m atp.train stage=<a stage of atp.stages.STAGES | chain> dataset=<...>``.

One job trains one stage; a multirun sweep ``-m stage=source,align,teach,propagate`` chains them
(each job starts from its registry predecessor's weights); ``stage=chain`` runs the whole chain in one job.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.plugins.environments import LSFEnvironment, SLURMEnvironment, TorchElasticEnvironment

from atp.cli import hydra_entry
from atp.config import SEARCHPATH_KEY
from atp.errors import UserError
from atp.evaluation.summary import METRIC, write_summary
from atp.run import pipeline, run_stage
from atp.run.distributed import on_main_process
from atp.run.init_weights import STAGE_DEFAULT
from atp.stages import check_stage_options, default_chain, get_stage
from atp.stages.registry import CHAIN

log = logging.getLogger("atp.train")


def _leaves(node, prefix: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def apply_per_stage(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Merge ``per_stage.<stage name>`` into the config (recipes with per-stage schedules).

    A key given on the command line wins over the recipe's per-stage value.
    """
    extra = OmegaConf.select(cfg, f"per_stage.{cfg.stage.name}")
    if not extra:
        return cfg
    groups = set(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else set()
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides} - groups
    with open_dict(cfg):
        for key, value in _leaves(OmegaConf.to_container(extra)):
            if not any(key == g or key.startswith(g + ".") for g in given):
                OmegaConf.update(cfg, key, value, merge=True, force_add=True)
    return cfg


def _task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task)


def _searchpath_overrides() -> list[str]:
    """The user's ``hydra.searchpath=[…]`` override (their config folders), which Hydra keeps apart from the task
    overrides; the stages of a chain are composed with it too."""
    return [o for o in HydraConfig.get().overrides.hydra if o.lstrip("+~").split("=", 1)[0] == SEARCHPATH_KEY]


def chain_stages(cfg: DictConfig) -> list[str]:
    """``chain.stages``, or the registry's default chain when null; an unknown name is a ``UserError``."""
    names = [str(n) for n in cfg.chain.stages] if cfg.chain.get("stages") else default_chain()
    for name in names:
        get_stage(name)
    return names


def chain_init(stage: str, finished: list[tuple[str, Path]], configured: str | None = STAGE_DEFAULT) -> str | None:
    """``init_from`` for ``stage`` in a chain: the final checkpoint of the latest finished stage *of this chain*
    that is one of its registry predecessors; without one, the ``init_from`` the chain job was given
    (``configured``: ``default``, the stage's own default, unless set, e.g. a source checkpoint trained
    elsewhere for a chain that starts after source)."""
    predecessors = get_stage(stage).predecessors
    for name, checkpoint in reversed(finished):
        if name in predecessors:
            return str(checkpoint)
    return configured


def compose_chain(cfg: DictConfig, job_dir: Path) -> list[tuple[str, Path, DictConfig]]:
    """(stage, stage dir, config) for each stage of the chain, every stage's module options checked."""
    overrides = [*pipeline.chain_overrides(_task_overrides()), *_searchpath_overrides()]
    planned = []
    for index, stage in enumerate(chain_stages(cfg)):
        stage_dir = job_dir / f"{index}_{stage}"
        stage_cfg = compose(config_name="train", overrides=[*overrides, f"stage={stage}", "resume=true"])
        with open_dict(stage_cfg):
            stage_cfg.run_dir = str(stage_dir)
        stage_cfg = apply_per_stage(stage_cfg, overrides)
        check_stage_options(stage_cfg.stage)  # a misspelt per_stage option fails before anything trains
        planned.append((stage, stage_dir, stage_cfg))
    return planned


def run_chain(cfg: DictConfig, job_dir: Path) -> list[dict]:
    """All stages of the chain in one job; finished stages are skipped, an unfinished one resumed."""
    manifests: list[dict] = []
    finished: list[tuple[str, Path]] = []
    for stage, stage_dir, stage_cfg in compose_chain(cfg, job_dir):
        done = pipeline.read_manifest(stage_dir)
        if done and pipeline.is_finished(done):
            log.info("chain: %s already finished in %s, skipping", stage, stage_dir)
            manifests.append(done)
            finished.append((stage, pipeline.manifest_checkpoint(done)))
            continue
        with open_dict(stage_cfg):
            # the stage configs are composed without the job's init_from (a per-stage key): pass it on here
            stage_cfg.init_from = chain_init(stage, finished, cfg.init_from)
        manifest = run_stage(stage_cfg, stage_dir, sweep_dir=job_dir, key="chain")
        manifest["_dir"] = str(stage_dir)
        manifests.append(manifest)
        finished.append((stage, pipeline.manifest_checkpoint(manifest)))
        on_main_process(write_summary, job_dir)  # under DDP every rank runs the chain; one writes the summary
    return manifests


def launches_ranks(trainer_cfg: DictConfig) -> bool:
    """Whether Lightning will start the other DDP processes itself, by re-running this command line.

    Not when a cluster or torchrun started them (SLURM, LSF, TorchElastic), nor in such a re-run rank.
    """
    if "LOCAL_RANK" in os.environ or any(env.detect() for env in (SLURMEnvironment, TorchElasticEnvironment,
                                                                  LSFEnvironment)):
        return False
    devices = trainer_cfg.get("devices", 1)
    count = len(devices) if OmegaConf.is_list(devices) else int(devices) if str(devices).isdigit() else 1
    spawn = "spawn" in str(trainer_cfg.get("strategy", ""))
    return not spawn and (count > 1 or int(trainer_cfg.get("num_nodes", 1)) > 1)


@hydra_entry("train")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    sweep_dir = Path(hydra_cfg.sweep.dir) if multirun else None
    if multirun and launches_ranks(cfg.trainer):
        # The re-run repeats -m: rank 1 would start a sweep of its own, in another sweep dir.
        raise UserError(
            "a -m sweep cannot start several processes per job (trainer.devices/num_nodes > 1): Lightning "
            "re-runs the command line for each extra process, sweep included. Run one job without -m "
            "(stage=chain runs all stages), or launch the sweep on SLURM (hydra/launcher=submitit_slurm)"
        )
    if cfg.stage.name == CHAIN:
        run_chain(cfg, run_dir)
        return
    cfg = apply_per_stage(cfg, _task_overrides())
    key = pipeline.chain_key(_task_overrides())
    manifest = run_stage(cfg, run_dir, sweep_dir=sweep_dir, key=key)
    if sweep_dir is not None:
        on_main_process(write_summary, sweep_dir)
    metrics = manifest.get("metrics", {})
    log.info("stage=%s finished: target-val mIoU %.2f → %s", cfg.stage.name, metrics.get(METRIC, float("nan")),
             run_dir)


if __name__ == "__main__":
    main()
