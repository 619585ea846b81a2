"""W&B extras for ``logger=wandb``: sample panels, a per-class IoU table and the stage's model artifact.

The ``wandb_panels`` entry of ``conf/callbacks``; inert without a W&B logger. Rank zero only. Nothing here changes training: the panels read fixed target-val samples straight from
the dataset (not through a loader), run without gradients in eval mode, and restore module modes,
the teacher's buffers and every RNG state. A failing W&B call is logged as a warning.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw

from atp.adaptation import normalized_entropy, pseudo_labels_from_logits
from atp.data.labels import colourise
from atp.data.transforms import to_rgb_uint8
from atp.evaluation.inference import segment_probs

log = logging.getLogger(__name__)

LOW_CONFIDENCE_DIM = 0.35  # pseudo-label pixels under the teacher's confidence threshold are darkened


@contextlib.contextmanager
def kept_rng(device: torch.device) -> Iterator[None]:
    """Restore the Python, NumPy and torch (CPU and ``device``) generators afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextlib.contextmanager
def kept_state(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode and untouched buffers (BN statistics) inside; the previous modes and values afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for b, value in buffers:
                b.copy_(value)


def na_tile(height: int, width: int) -> np.ndarray:
    """A grey tile marked ``n/a`` (stages without pseudo-labels)."""
    tile = Image.new("RGB", (width, height), (128, 128, 128))
    ImageDraw.Draw(tile).text((4, 4), "n/a", fill=(255, 255, 255))
    return np.asarray(tile)


def composite(tiles: list[np.ndarray], tile_width: int | None) -> np.ndarray:
    """Tiles side by side, each shrunk to ``tile_width`` when wider."""
    height, width = tiles[0].shape[:2]
    if tile_width and width > tile_width:
        size = (tile_width, max(1, round(height * tile_width / width)))
        tiles = [np.asarray(Image.fromarray(t).resize(size, Image.Resampling.BILINEAR)) for t in tiles]
    return np.concatenate(tiles, axis=1)


class WandbPanels(pl.Callback):
    """Image panels every ``image_interval`` steps and at the end; a per-class IoU table per validation.

    One composite per sample: input | student prediction | teacher pseudo-label (dimmed where the
    teacher is under its confidence threshold; ``n/a`` for stages without one) | normalised entropy.
    It logs through the trainer's first ``WandbLogger`` (found at ``setup``) and does nothing without one.
    """

    def __init__(self, image_interval: int = 1000, image_count: int = 4, image_tile_width: int | None = 512,
                 log_model: bool = False) -> None:
        self.logger: Any = None
        self.image_interval = int(image_interval or 0)
        self.image_count = int(image_count or 0)
        self.image_tile_width = image_tile_width
        self.log_model = bool(log_model)
        self._samples: list[dict[str, Any]] | None = None
        self._last_panel_step = -1

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        from pytorch_lightning.loggers import WandbLogger

        self.logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.logger is not None and self.image_interval > 0 and step > 0 and step % self.image_interval == 0:
            self.log_panel(trainer, module)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.logger is not None:
            self.log_panel(trainer, module)

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        metrics = getattr(module, "last_val_metrics", None)
        if self.logger is None or trainer.sanity_checking or not metrics or not trainer.is_global_zero:
            return
        rows = [[k.removeprefix("val/IoU/"), float(v)] for k, v in metrics.items() if k.startswith("val/IoU/")]
        self._guard("per-class IoU table", self.logger.log_table, key="val/per_class_IoU",
                    columns=["class", "IoU"], data=rows, step=trainer.global_step)

    # ------------------------------------------------------------------ panels
    def log_panel(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or self.image_count <= 0 or step == self._last_panel_step:
            return
        self._last_panel_step = step
        panels = self._guard("image panel", self.panels, trainer, module)
        if panels:
            images, names = zip(*panels, strict=True)
            self._guard("image panel", self.logger.log_image, key="val/panel", images=list(images), step=step,
                        caption=[f"{n} · step {step}" for n in names])

    def panels(self, trainer: pl.Trainer, module: pl.LightningModule) -> list[tuple[np.ndarray, str]]:
        """(composite, sample name) per fixed target-val sample."""
        with kept_rng(module.device), kept_state(module), torch.no_grad():
            return [(self._composite(module, s["img"].to(module.device)), str(s["name"]))
                    for s in self._fixed_samples(trainer)]

    def _fixed_samples(self, trainer: pl.Trainer) -> list[dict[str, Any]]:
        """``image_count`` samples spread evenly over target val, read once from the dataset itself."""
        if self._samples is None:
            dataset = trainer.datamodule.dataset("val")
            picks = np.linspace(0, len(dataset) - 1, min(self.image_count, len(dataset))).round().astype(int)
            self._samples = [dataset[int(i)] for i in dict.fromkeys(picks)]
        return self._samples

    def _composite(self, module: pl.LightningModule, img: torch.Tensor) -> np.ndarray:
        batch, size = img[None], img.shape[-2:]
        probs = segment_probs(module.student, batch, size, **module.inference_options())
        entropy = normalized_entropy(probs.clamp_min(1e-12).log())[0]
        tiles = [to_rgb_uint8(img), colourise(probs.argmax(dim=1)[0].cpu().numpy())]
        if module.teaches_with_pseudo_labels:
            labels, confidence, _ = pseudo_labels_from_logits(module.teacher(batch), size, module.conf_threshold)
            shade = torch.where(confidence[0] >= module.conf_threshold, 1.0, LOW_CONFIDENCE_DIM).cpu().numpy()
            tiles.append((colourise(labels[0].cpu().numpy()) * shade[..., None]).astype(np.uint8))
        else:
            tiles.append(na_tile(*size))
        grey = (entropy.clamp(0, 1) * 255).round().byte().cpu().numpy()
        tiles.append(np.repeat(grey[..., None], 3, axis=2))
        return composite(tiles, self.image_tile_width)

    # ------------------------------------------------------------------ end of stage
    def on_stage_complete(self, run_dir: Path, manifest: Mapping[str, Any]) -> None:
        """With ``log_model``, manifest + final checkpoint as one ``model`` artifact; then close the W&B run.

        Called by the run layer on rank 0 once the finished manifest is written (not a Lightning hook)."""
        if self.logger is None:
            return
        if self.log_model and manifest.get("final_ckpt"):
            self._guard("model artifact", self._log_artifact, Path(run_dir), manifest)
        self._guard("closing the run", lambda: self.logger.experiment.finish())

    def _log_artifact(self, run_dir: Path, manifest: Mapping[str, Any]) -> None:
        import wandb

        name = re.sub(r"[^\w.-]+", "-", f"{manifest['dataset']}-{manifest['stage']}-{run_dir.name}")
        metadata = {k: manifest.get(k) for k in ("stage", "dataset", "model", "seed", "steps", "metrics",
                                                  "config_hash")}
        artifact = wandb.Artifact(name, type="model", metadata=metadata)
        artifact.add_file(str(run_dir / "manifest.json"), name="manifest.json")
        # the checkpoint is not copied into W&B's staging area: it must stay in place until uploaded
        artifact.add_file(str(run_dir / manifest["final_ckpt"]), name="final.ckpt", policy="immutable")
        self.logger.experiment.log_artifact(artifact, aliases=["latest", f"step-{manifest.get('steps')}"])

    def _guard(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # W&B trouble must never stop training
            log.warning("W&B %s failed (%s: %s); training goes on", what, type(err).__name__, err)
            return None
