"""The weights a stage starts from (``init_from``): weights only, never trainer state (docs/ARCHITECTURE.md, "run layer")."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from atp.errors import UserError
from atp.models.weights import load_into, load_segmentor, read_checkpoint
from atp.run import pipeline
from atp.stages.base import SegStage

log = logging.getLogger(__name__)


def model_name(cfg: DictConfig) -> str:
    """The model's name as manifests record it (``model.name``, else the encoder)."""
    return str(OmegaConf.select(cfg, "model.name", default=None) or OmegaConf.select(cfg, "model.encoder"))


#: ``init_from`` value that means "the stage's ``default_init``" (registry: auto after a predecessor, else none)
STAGE_DEFAULT = "default"


def init_choice(cfg: DictConfig, stage: type[SegStage]) -> str | None:
    """``cfg.init_from`` with ``default`` replaced by the stage's ``default_init``."""
    init = cfg.init_from
    return stage.default_init if init == STAGE_DEFAULT else init


def resolve_init(cfg: DictConfig, stage: type[SegStage], sweep_dir: Path | None,
                 key: str) -> tuple[Path | None, str | None]:
    """Path of the checkpoint to initialise from (weights only) and the run dir it came from."""
    init = init_choice(cfg, stage)
    if init in (None, "null", "none"):
        return None, None
    if init == "auto":
        manifest = pipeline.resolve_predecessor(
            stage.stage_name, dataset=cfg.dataset.name, model=model_name(cfg), seed=cfg.seed,
            output_dir=cfg.paths.output_dir, sweep_dir=sweep_dir, key=key,
        )
        return pipeline.manifest_checkpoint(manifest), manifest["_dir"]
    path = Path(str(init)).expanduser()
    if not path.is_file():
        raise UserError(f"init_from={init}: no such file; pass a checkpoint path or init_from=auto")
    return path, None


def load_initial_weights(model: torch.nn.Module, cfg: DictConfig, path: Path | None, stage: type[SegStage]) -> str:
    """Weights-only initialisation; strict on what the checkpoint covers (spec §14 #8). Returns a note for the log.

    A stage without predecessors (source, distill) may start from an encoder alone (ImageNet weights);
    the others need a segmentation model.
    """
    trust = bool(cfg.trust_checkpoints)
    first = not stage.predecessors
    if path is None:
        imagenet = OmegaConf.select(cfg, "model.imagenet_init")
        if first and imagenet:
            state = read_checkpoint(imagenet, trust=trust)
            load_into(model, state, strict=True, parts=("encoder",))
            return f"encoder from ImageNet weights {imagenet}"
        return "random initialisation"
    state = read_checkpoint(path, which=cfg.init_which, trust=trust)
    prefixes = {name.split(".", 1)[0] for name in state}
    if prefixes == {"encoder"}:
        if not first:
            raise UserError(
                f"init_from={path} holds encoder weights only (an ImageNet backbone?); stage={stage.stage_name} needs a "
                "segmentation model: train one with stage=source, or use model.imagenet_init for stage=source"
            )
        load_into(model, state, strict=True, parts=("encoder",))
        return f"encoder from {path}"
    if getattr(model, "proj_head", None) is not None and "proj_head" not in prefixes:
        log.warning("%s has no projection head weights; the projection head starts from random weights", path)
    parts = load_segmentor(model, state, source=str(path))
    return f"{'+'.join(parts)} from {path}"
