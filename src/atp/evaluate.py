"""``python -m atp.evaluate ckpt=<path> dataset=<...> [weights=student|teacher] [eval.flip=true]``.

Target-val mIoU and per-class IoU (19 classes; 16/13 for SYNTHIA) of any checkpoint format that
``atp.convert`` reads. Writes ``metrics.json``, ``per_class_iou.png``, ``confusion_matrix.png`` and
sample images (input | prediction | ground truth | error map) into the output directory and prints a
table. With ``export=<cityscapes|acdc|darkzurich>`` it writes the benchmark-server submission of
``export_split`` (default ``test``) instead (:mod:`atp.evaluation.export`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from atp.atomic import atomic_write_json
from atp.cli import hydra_entry
from atp.config import CONF_DIR
from atp.data import build_datamodule
from atp.data.config import instantiate_entry
from atp.data.io import write_png_atomic
from atp.data.labels import CLASS_NAMES, IGNORE_INDEX, PALETTE, colourise
from atp.data.transforms import to_rgb_uint8
from atp.errors import CheckpointError, UserError
from atp.evaluation.export import check_dataset_fits, export_predictions, server_format
from atp.evaluation.inference import acdc_class_prior_weights, resolve_device, segment_probs
from atp.evaluation.metrics import SegMetric
from atp.models.weights import infer_segmentor_config, load_segmentor, read_checkpoint
from atp.progress import tracked

log = logging.getLogger("atp.evaluate")


def plot_per_class(ious: list[float], names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [0.0 if math.isnan(v) else 100 * v for v in ious]
    colours = [tuple(c / 255 for c in PALETTE[i]) for i in range(len(names))]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(range(len(names)), values, color=colours, edgecolor="0.3")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(confmat: torch.Tensor, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = confmat.double()
    rows = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(rows.numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: Error-map colours: wrong pixels red, right pixels black, pixels without ground truth grey.
ERROR_RGB, RIGHT_RGB, IGNORED_RGB = (255, 0, 0), (0, 0, 0), (128, 128, 128)


def model_input_rgb(img: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The normalised ``(3, h, w)`` model input back as uint8 RGB, resized (bilinear) to ``size`` = (H, W)."""
    import cv2

    rgb = to_rgb_uint8(img)
    if rgb.shape[:2] != tuple(size):
        rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return rgb


def error_map(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """RGB map of where ``pred`` disagrees with ``label`` (red), agrees (black), or has no ground truth (grey)."""
    out = np.empty((*label.shape, 3), np.uint8)
    out[:] = RIGHT_RGB
    out[(pred != label) & (label != IGNORE_INDEX)] = ERROR_RGB
    out[label == IGNORE_INDEX] = IGNORED_RGB
    return out


def sample_panel(img: torch.Tensor, pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """input | prediction | ground truth | error map, side by side at the label's size."""
    return np.concatenate(
        [model_input_rgb(img, label.shape), colourise(pred), colourise(label), error_map(pred, label)], axis=1
    )


def load_model(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """``cfg.model`` with the ``cfg.weights`` weights of ``cfg.ckpt`` (strictly), in eval mode on ``device``.

    A checkpoint that does not fit ``cfg.model`` is a :class:`CheckpointError` naming the network it holds.
    """
    ckpt = Path(str(cfg.ckpt)).expanduser()
    state = read_checkpoint(ckpt, which=cfg.weights, trust=cfg.trust_checkpoints)
    model = instantiate(cfg.model)
    try:
        load_segmentor(model, state, source=str(ckpt))
    except CheckpointError as err:
        try:
            held = f" (it holds a {infer_segmentor_config(state)['encoder']} network)"
        except CheckpointError:
            held = ""
        raise CheckpointError(f"{err}; choose the model= config the checkpoint was trained with{held}") from None
    return model.eval().to(device)


def segment_options(cfg: DictConfig) -> dict:
    """:func:`atp.evaluation.inference.segment_probs` options of ``cfg.eval`` (shared by scoring, export and
    :mod:`atp.predict`)."""
    prior = acdc_class_prior_weights() if cfg.eval.acdc_class_prior else None
    return {"mode": cfg.eval.mode, "crop_size": cfg.eval.crop_size, "stride": cfg.eval.stride,
            "flip": cfg.eval.flip, "class_prior": prior}


def evaluate(cfg: DictConfig, out_dir: Path, progress: bool = True) -> dict:
    """Run the evaluation described by ``cfg`` and write its artefacts into ``out_dir``.

    ``progress=False`` hides the per-batch bar (callers that print their own progress).
    """
    device = resolve_device(cfg.device)
    ckpt = Path(str(cfg.ckpt)).expanduser()
    model = load_model(cfg, device)

    datamodule = build_datamodule(cfg.dataset, mode="target", **OmegaConf.to_container(cfg.data, resolve=True))
    datamodule.setup("validate")
    loader = datamodule.val_dataloader()
    num_classes = int(cfg.dataset.num_classes)
    names = list(CLASS_NAMES[:num_classes])
    metric = SegMetric(num_classes, subsets=tuple(cfg.dataset.class_subsets), class_names=names, validate_args=False)
    options = segment_options(cfg)
    vis_dir = out_dir / "predictions"
    vis_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    with torch.no_grad():
        for index, batch in enumerate(tracked(loader, "evaluate", disable=not progress)):
            if cfg.limit_batches is not None and index >= cfg.limit_batches:
                break
            label = batch["label"].to(device).long()  # loaders deliver uint8 labels; the metric takes int64
            probs = segment_probs(model, batch["img"].to(device), label.shape[-2:], **options)
            pred = probs.argmax(dim=1)
            metric.update(pred, label)
            for b in range(pred.shape[0]):
                if written >= cfg.num_vis:
                    break
                name = Path(str(batch["name"][b])).stem
                panel = sample_panel(batch["img"][b], pred[b].cpu().numpy(), label[b].cpu().numpy())
                write_png_atomic(vis_dir / f"{name}_input_pred_gt_error.png", panel)
                written += 1

    matrix = metric.confmat.cpu()
    scores = {key: float(value) for key, value in metric.compute().items()}
    ious = [scores[f"IoU/{n}"] / 100 for n in names]
    result = {
        "ckpt": str(ckpt), "weights": cfg.weights, "dataset": cfg.dataset.name,
        "eval": OmegaConf.to_container(cfg.eval, resolve=True),
        "mIoU": {s: scores[f"mIoU/{s}"] for s in cfg.dataset.class_subsets},
        "per_class_iou": {n: (None if math.isnan(v) else 100 * v) for n, v in zip(names, ious, strict=True)},
        "pixel_acc": scores["pixel_acc"],
        "confusion_matrix": matrix.tolist(),
    }
    atomic_write_json(out_dir / "metrics.json", result)
    plot_per_class(ious, names, out_dir / "per_class_iou.png", f"{cfg.dataset.name}: mIoU {result['mIoU']['all19']:.2f}")
    plot_confusion(matrix, names, out_dir / "confusion_matrix.png")
    return result


def export(cfg: DictConfig, out_dir: Path, progress: bool = True) -> dict:
    """Write the ``cfg.export`` benchmark-server submission of the ``cfg.export_split`` target split.

    The split's images come from the dataset config's ``target_<split>`` entry (``target_test``,
    or ``target_val`` to check the round trip against :func:`evaluate`), read without labels.
    """
    fmt = server_format(str(cfg.export))
    split = str(cfg.export_split)
    role = f"target_{split}"
    name = str(cfg.dataset.name)
    if role not in cfg.dataset:
        raise UserError(
            f"dataset={name} has no {role!r} entry to export (conf/dataset/{name}.yaml); add one like "
            "conf/dataset/gta2cs.yaml's target_test, or choose export_split=val"
        )
    dataset = instantiate_entry(cfg.dataset, role, labelled=False, pipeline="eval")
    check_dataset_fits(fmt, dataset, name)
    len(dataset)  # index now: a missing folder is one line before the model is loaded
    device = resolve_device(cfg.device)
    model = load_model(cfg, device)
    summary = export_predictions(
        model, dataset, fmt, out_dir, f"{name}_{split}_{fmt.name}.zip", segment_options(cfg), device,
        batch_size=int(cfg.data.val_batch_size), num_workers=int(cfg.data.num_workers),
        limit_batches=cfg.limit_batches, progress=progress,
    )
    summary.update(ckpt=str(Path(str(cfg.ckpt)).expanduser()), weights=cfg.weights, dataset=name, split=split,
                   eval=OmegaConf.to_container(cfg.eval, resolve=True))
    atomic_write_json(out_dir / "export.json", summary)
    return summary


def evaluate_checkpoint(ckpt: str | Path, out_dir: str | Path, train_cfg: DictConfig, weights: str = "student",
                        reuse: bool = False, progress: bool = True) -> dict:
    """Evaluate one checkpoint in-process with the model, dataset, paths and data config it was trained with.

    ``train_cfg`` is a composed ``train`` config; ``weights`` is ``student`` or ``teacher`` (EMA). With
    ``reuse``, an ``out_dir/metrics.json`` of the same checkpoint and weights that is newer than the
    checkpoint is returned instead of evaluating again. Returns the metrics dict (see :func:`evaluate`).
    """
    ckpt, out_dir = Path(ckpt).resolve(), Path(out_dir)
    if reuse:
        cached = _fresh_metrics(out_dir / "metrics.json", ckpt, weights)
        if cached is not None:
            return cached
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("evaluate")
    with open_dict(cfg):
        cfg.ckpt, cfg.output_dir, cfg.weights = str(ckpt), str(out_dir), weights
        for key in ("model", "dataset", "paths", "data"):
            cfg[key] = train_cfg[key]
        cfg.data.num_workers = 0
    return evaluate(cfg, out_dir, progress=progress)


def _fresh_metrics(path: Path, ckpt: Path, weights: str) -> dict | None:
    """The metrics in ``path`` when they are of ``ckpt``/``weights`` and newer than the checkpoint."""
    try:
        if path.stat().st_mtime < ckpt.stat().st_mtime:
            return None
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return metrics if metrics.get("ckpt") == str(ckpt) and metrics.get("weights") == weights else None


def print_table(result: dict) -> None:
    print(f"\n{'class':<15} IoU")
    for name, value in result["per_class_iou"].items():
        print(f"{name:<15} {'  n/a' if value is None else f'{value:5.1f}'}")
    for subset, value in result["mIoU"].items():
        print(f"{'mIoU ' + subset:<15} {value:5.2f}")


@hydra_entry("evaluate")
def main(cfg: DictConfig) -> None:
    out_dir = Path(cfg.output_dir)
    if cfg.export is not None:
        summary = export(cfg, out_dir)
        print(f"wrote {summary['images']} {cfg.export_split} predictions for the {summary['server']} server to "
              f"{summary['files']}\nupload {summary['zip']} (rules: {summary['rules']})")
        return
    result = evaluate(cfg, out_dir)  # errors the user can fix are one line (atp.cli.hydra_entry)
    print_table(result)
    print(f"\nwrote {out_dir}/metrics.json, per_class_iou.png, confusion_matrix.png, predictions/")


if __name__ == "__main__":
    main()
