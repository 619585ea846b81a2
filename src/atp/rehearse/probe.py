"""The rehearsal's recording callback: what a stage does at the real sizes, seen from inside its own process.

``python -m atp.train … +callbacks.rehearsal._target_=atp.rehearse.probe.RehearsalProbe
+callbacks.rehearsal.out=<file>`` adds it to a stage like any configured callback; it changes nothing the
stage computes and writes ``<file>`` (JSON) when training ends:

* ``step_seconds``: the wall time of every training step (``on_train_batch_start`` → ``on_train_batch_end``,
  the device queue drained at both ends), so start-up, the entropy ranking and validation are not in it;
* ``losses``: every loss the step passed to ``manual_backward``, per step (the seed-rerun comparison);
* ``peak_gpu_gib``: ``torch.cuda.max_memory_allocated`` over the training steps (CUDA only);
* ``shapes`` of the first step's tensors at the stage's boundaries: the loader's batch per stream, the inputs
  of the student's and teacher's encoders, the teacher's pseudo-labels (and the crops they were taken on), the
  labels training uses, the prototype update and the prototypes, the ClassMix masks;
* ``hard_weights``: every step's Propagate hard-pixel weights (spec §8.2 step 5): their shape, the rows the
  stage zeroed (the weights the stage's own call gives a quality of 1) and whether the real weights equal the
  quality there and 0 in those rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from atp.atomic import atomic_write_json


def batch_shapes(batch: Any) -> dict[str, Any]:
    """``{"img": shape, "label": shape}`` of a loader batch, per stream when it holds several (Propagate)."""
    if "img" in batch:
        return {key: list(batch[key].shape) for key in ("img", "label") if key in batch}
    return {stream: batch_shapes(sub) for stream, sub in batch.items() if isinstance(sub, dict)}


def zeroed_row_ranges(mask: torch.Tensor) -> list[list[int]]:
    """``[start, stop)`` ranges of the rows of a ``(H, W)`` map that are zero across the whole row."""
    zero = (mask == 0).all(dim=-1).tolist()
    ranges: list[list[int]] = []
    for row, is_zero in enumerate(zero):
        if is_zero and ranges and ranges[-1][1] == row:
            ranges[-1][1] = row + 1
        elif is_zero:
            ranges.append([row, row + 1])
    return ranges


class RehearsalProbe(Callback):
    """Records step times, losses, peak GPU memory, boundary shapes and Propagate's hard-pixel weights of one
    stage into the JSON file ``out`` (see the module docstring)."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.record: dict[str, Any] = {"step_seconds": [], "losses": [], "shapes": {}, "hard_weights": []}
        self._undo: list[Callable[[], None]] = []
        self._first_step_undo: list[Callable[[], None]] = []
        self._step_losses: list[torch.Tensor] = []
        self._started = 0.0

    # ------------------------------------------------------------------ Lightning hooks
    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.record.update(stage=type(module).__name__, device=str(module.device), max_steps=trainer.max_steps)
        if module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(module.device)
            self.record["peak_gpu_gib"] = 0.0
        self._wrap_method(module, "manual_backward", self._on_backward, self._undo)
        self._install_first_step_probes(module)
        self._install_propagate_probes()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if not self.record["step_seconds"]:
            self.record["shapes"]["batch"] = batch_shapes(batch)
        self._step_losses = []
        self._sync(module)
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._sync(module)
        self.record["step_seconds"].append(time.perf_counter() - self._started)
        self.record["losses"].append([float(loss) for loss in self._step_losses])
        if module.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(module.device) / 2**30
            self.record["peak_gpu_gib"] = max(self.record["peak_gpu_gib"], peak)
        if len(self.record["step_seconds"]) == 1:
            self._undo_all(self._first_step_undo)
            prototypes = getattr(module, "prototypes", None)
            if prototypes is not None:
                self.record["shapes"]["prototypes"] = {
                    "mean": list(prototypes.mean.shape), "classes_seen": int((prototypes.count > 0).sum())}

    def on_train_end(self, trainer, module) -> None:
        self._undo_all(self._first_step_undo)
        self._undo_all(self._undo)
        self.record["steps"] = len(self.record["step_seconds"])
        atomic_write_json(self.out, self.record)

    def on_exception(self, trainer, module, exception) -> None:
        self._undo_all(self._first_step_undo)
        self._undo_all(self._undo)
        self.record["exception"] = f"{type(exception).__name__}: {exception}"[:500]
        atomic_write_json(self.out, self.record)

    # ------------------------------------------------------------------ probes
    def _install_first_step_probes(self, module: pl.LightningModule) -> None:
        shapes = self.record["shapes"]
        networks = [("student", module.student)]
        teacher = getattr(module, "teacher", None)
        if teacher is not None:
            networks.append(("teacher", teacher.model))
        for name, network in networks:
            calls = shapes.setdefault(f"{name}_encoder_inputs", [])
            handle = network.encoder.register_forward_pre_hook(
                lambda _m, args, calls=calls: calls.append(list(args[0].shape)))
            self._first_step_undo.append(handle.remove)

        def pseudo_label(result, images, *args, **kwargs):
            shapes.setdefault("pseudo_labels", []).append(
                {"input": list(images.shape), "crop": list(result.images.shape), "labels": list(result.labels.shape)})

        def track_classes(_result, *labels):
            shapes.setdefault("training_labels", []).extend(list(label.shape) for label in labels)

        self._wrap_method(module, "pseudo_label", pseudo_label, self._first_step_undo)
        self._wrap_method(module, "track_classes", track_classes, self._first_step_undo)
        prototypes = getattr(module, "prototypes", None)
        if prototypes is not None:
            def prototype_update(_result, feats, labels):
                shapes["prototype_update"] = {"features": list(feats.shape), "labels": list(labels.shape)}

            self._wrap_method(prototypes, "update", prototype_update, self._first_step_undo)

    def _install_propagate_probes(self) -> None:
        """Propagate's ClassMix masks (first step) and hard-pixel weights (every step), read where the stage
        calls the functions that make them (names looked up in its module at call time)."""
        from atp.stages import propagate

        shapes = self.record["shapes"]
        make_weights = propagate.row_ignore_weights
        make_masks = propagate.classmix_masks

        def row_ignore_weights(q, shape, top=15, bottom=120, device=None):
            weights = make_weights(q, shape, top=top, bottom=bottom, device=device)
            ones = torch.ones((), device=weights.device)
            rows = make_weights(ones, shape, top=top, bottom=bottom, device=device)  # q = 1: the zeroed rows alone
            quality = torch.as_tensor(q, dtype=torch.float32, device=weights.device).reshape(-1, 1, 1)
            self.record["hard_weights"].append({
                "shape": list(weights.shape), "top": top, "bottom": bottom,
                "zeroed_rows": zeroed_row_ranges(rows[0]),
                "weights_are_quality_outside_those_rows": bool(torch.equal(weights, quality * rows)),
                "quality": [float(v) for v in quality.flatten()],
            })
            return weights

        def classmix_masks(labels, *args, **kwargs):
            masks = make_masks(labels, *args, **kwargs)
            if "classmix_masks" not in shapes:
                shapes["classmix_masks"] = {"shape": list(masks.shape), "dtype": str(masks.dtype).removeprefix("torch."),
                                            "pasted_share": float(masks.float().mean())}
            return masks

        for name, replacement in (("row_ignore_weights", row_ignore_weights), ("classmix_masks", classmix_masks)):
            original = getattr(propagate, name)
            setattr(propagate, name, replacement)
            self._undo.append(lambda name=name, original=original: setattr(propagate, name, original))

    def _on_backward(self, _result, loss, *args, **kwargs) -> None:
        self._step_losses.append(loss.detach().float().clone())

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _wrap_method(owner: Any, name: str, after: Callable[..., None], undo: list) -> None:
        """Shadow ``owner.name`` with a wrapper that calls it, then ``after(result, *args, **kwargs)``."""
        method = getattr(owner, name, None)
        if method is None:
            return

        def wrapper(*args, **kwargs):
            result = method(*args, **kwargs)
            after(result, *args, **kwargs)
            return result

        setattr(owner, name, wrapper)
        undo.append(lambda: vars(owner).pop(name, None))

    @staticmethod
    def _undo_all(undo: list[Callable[[], None]]) -> None:
        while undo:
            undo.pop()()

    @staticmethod
    def _sync(module: pl.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
